"""Telemetry: OpenTelemetry spans (``tracing``), their export from a child process (``relay``, the
process itself ``export_process``) and Ray metrics (``metrics``).

Imports nothing else of Loom's; every other package, ``workers/`` included, may import it.
"""
