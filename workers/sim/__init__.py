"""A simulated engine behind the Engine protocol (workers/engine.py), so that Loom's real control
plane runs against many engines on a small machine: vLLM's continuous batching (``scheduler``)
over a prefix cache of hashed blocks with LRU eviction (``block_cache``) whose KV events go out
on vLLM's wire (``events``), step times from a measured profile (``profile``), tokens from
documents a model wrote (``script``), stepped in real time on the worker's loop (``engine``),
with the CPU a real engine's host side takes beside it (``host_load``) and its front end inside
the worker's process (``front_end``) emulated where asked.
"""
