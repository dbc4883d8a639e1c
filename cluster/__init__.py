"""Cluster glue: configuration, the Serve application, the local launcher and the CLI."""
