"""A request straight to a worker's engine, as the engine client sends it: over the worker's
stream (its endpoint from ``ready``, which also waits for a restarting worker); an engine's KV
blocks all free; and the prompt the KV tests move between engines (FOUR part-way through its
reasoning: several whole blocks)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from models.task import Question, Term, trace
from orchestrator.driver.records import JobRequest
from orchestrator.protocol.generation import GenChunk, GenRequest
from orchestrator.routing.stream_client import StreamClient

BLOCK = 32  # the session engines' KV block, in tokens
FOUR = Question((Term(123, 4), Term(56, 7), Term(809, 3), Term(41, 6)))


async def stream(handle, req: GenRequest) -> AsyncIterator[GenChunk]:
    client = StreamClient((await handle.ready.remote()).stream)
    try:
        async for chunk in client.generate(req):
            yield chunk
    finally:
        client.close()


async def chunks(handle, req: GenRequest) -> list[GenChunk]:
    return [c async for c in stream(handle, req)]


async def generate(handle, rid: str, ids: list[int], n: int = 24, kv: dict | None = None):
    tokens, last = [], None
    async for last in stream(handle, GenRequest(rid, ids, n, kv_params=kv)):
        tokens += last.token_ids
    return tokens, last


async def no_blocks_in_use(*handles, timeout: float = 10.0) -> None:
    """Every KV block of each engine is free (vLLM resets its prefix cache only then)."""
    deadline = time.monotonic() + timeout
    for h in handles:
        while not await h.reset_prefix_cache.remote():
            assert time.monotonic() < deadline, "KV blocks still in use"
            await asyncio.sleep(0.1)


def prompt_ids(loom, question: Question, reasoning: int = 300) -> list[int]:
    """A question part-way through its reasoning: several whole blocks."""
    return loom.runner.prepare(JobRequest(prompt=question.prompt + trace(question)[:reasoning]))


def prompt_and_held(loom, reasoning: int = 300) -> tuple[list[int], int]:
    """A prompt of FOUR and the tokens of its whole blocks short of its last token (what a pull moves)."""
    ids = prompt_ids(loom, FOUR, reasoning)
    return ids, (len(ids) - 1) // BLOCK * BLOCK
