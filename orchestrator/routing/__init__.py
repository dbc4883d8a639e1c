"""Routing: where a request runs, and how it gets there.

Owns: what each engine's KV cache holds (``kv_index``, fed by ``kv_events``), the placement
cost model (``placement``: where a thread is placed, with the KV link's cost in ``link``), how
many of a fork's threads run at once (``fork_width``: the adaptive policy's estimate), the
worker actors as the client sees them (``pool``: streams, loss, revival, loads), a prefix pulled
from the worker holding it (``kv_pulls``; the blocks move in ``workers/kv``), and the engine
client that places a segment, streams it over a worker's socket (``engine_client``,
``stream_client``) and re-runs it when its worker dies. May import ``protocol``, ``telemetry``
and ``budget``.
"""
