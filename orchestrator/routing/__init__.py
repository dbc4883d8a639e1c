"""Routing: where a request runs, and how it gets there.

Owns: what each engine's KV cache holds (``kv_index``, fed by ``kv_events``), the placement
cost model (``placement``, with the KV link's cost in ``link``), and the engine client that
places a segment, streams it over a worker's socket (``stream_client``) and re-runs it when its
worker dies. May import ``protocol``, ``telemetry`` and ``budget``.
"""
