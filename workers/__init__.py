"""The GPU (or CPU) workers: a Ray actor owning one engine (``worker``), the engine and its
settings (``engine``, ``config``), the worker's own request socket (``stream_server``, its
chunks batched by ``stream_batch``), the KV moved between engines (``kv``) and a simulated
engine behind the same protocol (``sim``). May import
``orchestrator.protocol`` and ``orchestrator.telemetry`` only.
"""
