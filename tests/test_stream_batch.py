"""A worker's streamed chunks batched by an interval (workers/stream_batch.py), over scripted
sources: the first tokens go out alone, what follows within the interval goes out together,
a finished chunk is never held back, and a failing engine stream still fails the caller."""
from __future__ import annotations

import asyncio

import pytest

from orchestrator.protocol.generation import GenChunk
from workers.stream_batch import batched, quiet


async def source(n: int, gap_s: float, fail_at: int | None = None):
    for i in range(n):
        await asyncio.sleep(gap_s)
        if i == fail_at:
            raise RuntimeError("engine fell over")
        last = i == n - 1
        yield GenChunk("r", [i], finished=last, finish_reason="stop" if last else None,
                       cached_tokens=32 if i == 0 else 0, first_token_at=100.0, finished_at=200.0 if last else 0.0)


async def collect(stream) -> list[GenChunk]:
    return [c async for c in stream]


async def test_the_first_tokens_go_alone_and_the_rest_within_the_interval_together():
    out = await asyncio.wait_for(collect(batched(source(12, 0.001), 30.0)), 10)  # the end is not held back
    assert [c.token_ids for c in out] == [[0], list(range(1, 12))]
    last = out[-1]
    assert last.finished and last.finish_reason == "stop"
    assert (last.cached_tokens, last.first_token_at, last.finished_at) == (0, 100.0, 200.0)


async def test_a_chunk_goes_out_once_it_holds_max_tokens():
    out = await asyncio.wait_for(collect(batched(source(12, 0.001), 30.0, max_tokens=4)), 10)
    assert [c.token_ids for c in out] == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]


async def test_chunks_further_apart_than_the_interval_go_one_by_one():
    out = await collect(batched(source(4, 0.2), 0.01))
    assert [c.token_ids for c in out] == [[0], [1], [2], [3]]


async def test_no_interval_passes_every_chunk_on():
    out = await collect(batched(source(5, 0.0), 0.0))
    assert [c.token_ids for c in out] == [[i] for i in range(5)]


async def test_an_engine_failure_reaches_the_caller():
    with pytest.raises(RuntimeError, match="fell over"):
        await collect(batched(source(6, 0.001, fail_at=3), 30.0))


async def test_closing_the_stream_early_stops_the_engine_stream():
    stopped = asyncio.Event()

    async def endless():
        try:
            while True:
                await asyncio.sleep(0.001)
                yield GenChunk("r", [1])
        finally:
            stopped.set()

    stream = batched(endless(), 0.005)
    assert (await anext(stream)).token_ids == [1]
    await stream.aclose()
    await asyncio.wait_for(stopped.wait(), 5)


async def test_a_held_stream_sends_its_first_tokens_then_everything_else_with_its_end():
    out = await asyncio.wait_for(collect(quiet(source(12, 0.001))), 10)
    assert [c.token_ids for c in out] == [[0], list(range(1, 12))]
    last = out[-1]
    assert last.finished and last.finish_reason == "stop" and (last.first_token_at, last.finished_at) == (100.0, 200.0)


async def test_a_held_stream_of_one_chunk_is_that_chunk():
    out = await collect(quiet(source(1, 0)))
    assert [(c.token_ids, c.finished) for c in out] == [([0], True)]


async def test_a_held_stream_that_ends_unfinished_still_sends_what_it_made():
    async def unfinished():
        async for c in source(5, 0):
            yield GenChunk("r", c.token_ids)  # never finished
    out = await collect(quiet(unfinished()))
    assert [c.token_ids for c in out] == [[0], [1, 2, 3, 4]] and not out[-1].finished


async def test_a_held_stream_still_fails_the_caller():
    with pytest.raises(RuntimeError, match="fell over"):
        await collect(quiet(source(6, 0, fail_at=3)))
