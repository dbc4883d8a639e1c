"""Telemetry: OpenTelemetry spans (``tracing``) and Ray metrics (``metrics``).

Imports nothing else of Loom's; every other package, ``workers/`` included, may import it.
"""
