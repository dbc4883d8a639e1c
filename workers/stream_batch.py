"""Streamed chunks batched by an interval, as Ray Serve LLM batches its output stream: every
chunk a worker sends is a frame the engine client must read and account for, on a CPU the
engine may share, so the tokens an engine produces within ``interval_s`` go out as one chunk,
and a chunk goes out early once it holds ``max_tokens`` (so a thread's budget, spent as chunks
arrive, overshoots by less than that). The first tokens and the last chunk are never held back
(time to first token, and the end of a thread, which a fork or join waits on).

A request whose caller streams nobody its tokens and has reserved them all (GenRequest.quiet)
goes out ``quiet``: its first tokens, then everything else as one chunk at its end.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from orchestrator.protocol.generation import GenChunk

_END = object()


def merge(a: GenChunk, b: GenChunk) -> GenChunk:
    """``b`` after ``a``, as one chunk."""
    return replace(b, token_ids=a.token_ids + b.token_ids,
                   cached_tokens=max(a.cached_tokens, b.cached_tokens),
                   first_token_at=a.first_token_at or b.first_token_at)


async def batched(chunks: AsyncIterator[GenChunk], interval_s: float,
                  max_tokens: int = 0) -> AsyncIterator[GenChunk]:
    """``chunks`` merged: after a chunk with the first tokens, what arrives within ``interval_s``
    of the next chunk goes out with it, until it holds ``max_tokens`` (0: no cap); a finished
    chunk goes out at once."""
    if interval_s <= 0:
        async for chunk in chunks:
            yield chunk
        return
    queue: asyncio.Queue = asyncio.Queue()
    pump = asyncio.ensure_future(_pump(chunks, queue))
    try:
        sent_tokens = False
        while (chunk := await _next(queue)) is not _END:
            if sent_tokens:
                chunk = await _gather(queue, chunk, time.monotonic() + interval_s, max_tokens)
            sent_tokens = sent_tokens or bool(chunk.token_ids)
            yield chunk
            if chunk.finished:
                return
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def quiet(chunks: AsyncIterator[GenChunk]) -> AsyncIterator[GenChunk]:
    """``chunks`` as two: the first with tokens, then the rest with the finished one."""
    ids: list[int] = []
    first_sent, last = False, None
    async for last in chunks:
        if last.finished:
            yield replace(last, token_ids=ids + last.token_ids) if ids else last
            return
        if first_sent or not last.token_ids:
            ids += last.token_ids
        else:
            first_sent = True
            yield last
    if ids:  # the stream ended unfinished: what it made still goes out
        yield replace(last, token_ids=ids)


async def _gather(queue: asyncio.Queue, chunk: GenChunk, deadline: float, max_tokens: int) -> GenChunk:
    """``chunk`` with what follows it until ``deadline``, the end of the stream, a finished chunk,
    or ``max_tokens`` held."""
    while not chunk.finished and not (max_tokens and len(chunk.token_ids) >= max_tokens):
        try:
            nxt = await asyncio.wait_for(_next(queue), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return chunk
        if nxt is _END:
            queue.put_nowait(_END)  # seen on the next call
            return chunk
        chunk = merge(chunk, nxt)
    return chunk


async def _next(queue: asyncio.Queue):
    item = await queue.get()
    if isinstance(item, BaseException):
        raise item
    return item


async def _pump(chunks: AsyncIterator[GenChunk], queue: asyncio.Queue) -> None:
    try:
        async for chunk in chunks:
            queue.put_nowait(chunk)
    except Exception as e:  # noqa: BLE001 - handed to the consumer, raised there
        queue.put_nowait(e)
    else:
        queue.put_nowait(_END)
