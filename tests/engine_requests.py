"""A request straight to a worker's engine, as the engine client sends it: over the worker's
stream (its endpoint from ``ready``, which also waits for a restarting worker)."""
from __future__ import annotations

from collections.abc import AsyncIterator

from orchestrator.protocol.generation import GenChunk, GenRequest
from orchestrator.routing.stream_client import StreamClient


async def stream(handle, req: GenRequest) -> AsyncIterator[GenChunk]:
    client = StreamClient((await handle.ready.remote()).stream)
    try:
        async for chunk in client.generate(req):
            yield chunk
    finally:
        client.close()


async def chunks(handle, req: GenRequest) -> list[GenChunk]:
    return [c async for c in stream(handle, req)]
