"""A worker's engine stream (workers/stream_server.py, orchestrator/routing/stream_client.py, the frames
of orchestrator/protocol/wire.py) over a real local socket, with a scripted engine: requests multiplexed
on one connection each get their own chunks in order; an engine's error fails only its request;
a dead worker fails every request on it with WorkerLost; a driver that goes away takes its
requests with it; a connection without the worker's token gets nothing."""
from __future__ import annotations

import asyncio
import dataclasses
import struct

import pytest
from polling import until

from orchestrator.protocol import wire
from orchestrator.protocol.generation import GenChunk, GenRequest
from orchestrator.routing.stream_client import StreamClient, WorkerLost, WorkerRequestFailed
from workers.stream_server import StreamServer


class ScriptedEngine:
    """``max_tokens`` chunks of one token (the request's seed plus the index), ``gap_s`` apart;
    a request whose prompt starts with -1 fails at its second token, one with -2 ends unfinished."""

    def __init__(self, gap_s: float = 0.001):
        self.gap_s = gap_s
        self.started: list[str] = []
        self.closed: list[str] = []  # requests whose generator was closed before their end

    async def generate(self, req: GenRequest):
        done = False
        self.started.append(req.request_id)
        try:
            for i in range(req.max_tokens):
                await asyncio.sleep(self.gap_s)
                if req.prompt_ids[0] == -1 and i == 1:
                    raise ValueError("prompt too long")
                last = i == req.max_tokens - 1 and req.prompt_ids[0] != -2
                yield GenChunk(req.request_id, [(req.seed or 0) + i], finished=last, finish_reason="stop" if last else None)
            done = True
        finally:
            if not done:
                self.closed.append(req.request_id)


@pytest.fixture
async def served():
    engine = ScriptedEngine()
    server = StreamServer(engine.generate, "127.0.0.1")
    endpoint = await server.start()
    client = StreamClient(endpoint)
    yield engine, server, client
    client.close()
    server.close()


async def running(engine: ScriptedEngine, n: int) -> None:
    """Until the engine has started ``n`` requests (each a stream the worker serves)."""
    await until(lambda: len(engine.started) >= n, 30, f"{n} requests started", every=0.01)


async def tokens(client: StreamClient, req: GenRequest) -> list[int]:
    return [t async for c in client.generate(req) for t in c.token_ids]


async def test_requests_share_one_connection_and_each_gets_its_own_chunks_in_order(served):
    _, _, client = served
    reqs = [GenRequest(f"r{k}", [1], 5 + k, seed=100 * k) for k in range(8)]
    got = await asyncio.gather(*(tokens(client, r) for r in reqs))
    assert got == [[100 * k + i for i in range(5 + k)] for k in range(8)]
    conn = client.conn
    assert await tokens(client, GenRequest("again", [1], 2, seed=7)) == [7, 8] and client.conn is conn
    assert conn.queues == {}  # nothing left waiting


async def test_every_field_of_a_request_and_its_chunks_crosses_unchanged():
    seen = []

    async def echo(req: GenRequest):
        seen.append(req)
        yield GenChunk(req.request_id, [1, 2], finished=True, finish_reason="stop", stop_reason="</Outlines>",
                       prompt_tokens=3, cached_tokens=2, first_token_at=1.5, finished_at=2.5,
                       kv_params={"loom_pulled": {"holder": "w0", "ok": True, "ms": 1.25}})

    server = StreamServer(echo, "127.0.0.1")
    client = StreamClient(await server.start())
    req = GenRequest("x", [5, 6, 7], 9, stop=["</Outlines>"], temperature=0.5, seed=3, top_p=0.9,
                     trace={"traceparent": "00-ab-cd-01"}, ignore_eos=True, kv_params={"loom_pull": {"port": 1}},
                     quiet=True)
    [chunk] = [c async for c in client.generate(req)]
    assert seen == [req]
    assert dataclasses.asdict(chunk)["kv_params"] == {"loom_pulled": {"holder": "w0", "ok": True, "ms": 1.25}}
    assert (chunk.stop_reason, chunk.cached_tokens, chunk.finished_at) == ("</Outlines>", 2, 2.5)
    client.close()
    server.close()


async def test_an_engine_error_fails_its_request_only(served):
    _, _, client = served
    bad = tokens(client, GenRequest("bad", [-1], 5))
    good = tokens(client, GenRequest("good", [1], 5, seed=10))
    out = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(out[0], WorkerRequestFailed) and "ValueError: prompt too long" in str(out[0])
    assert out[1] == [10, 11, 12, 13, 14]


async def test_a_stream_the_engine_ends_unfinished_ends_for_the_caller(served):
    _, _, client = served
    chunks = [c async for c in client.generate(GenRequest("cut", [-2], 3))]
    assert [c.token_ids for c in chunks] == [[0], [1], [2]] and not chunks[-1].finished


async def test_a_dead_worker_fails_every_request_on_it_and_then_cannot_be_reached(served):
    engine, server, client = served
    engine.gap_s = 0.05
    streams = [asyncio.ensure_future(tokens(client, GenRequest(f"long{k}", [1], 1000))) for k in range(3)]
    await running(engine, 3)
    server.close()  # the listener and every open connection, as when the process is gone
    for s in streams:
        with pytest.raises(WorkerLost, match="broke"):
            await s
    with pytest.raises(WorkerLost, match="cannot reach"):
        await tokens(client, GenRequest("after", [1], 1))


async def test_a_driver_that_goes_away_takes_its_requests_with_it(served):
    engine, _, client = served
    engine.gap_s = 0.05
    streams = [asyncio.ensure_future(tokens(client, GenRequest(f"orphan{k}", [1], 1000))) for k in range(2)]
    await running(engine, 2)
    client.close()
    for _ in range(100):
        if sorted(engine.closed) == ["orphan0", "orphan1"]:
            break
        await asyncio.sleep(0.02)
    assert sorted(engine.closed) == ["orphan0", "orphan1"]  # each generator closed: the engine aborts it
    for s in streams:
        s.cancel()


async def test_a_caller_that_stops_reading_leaves_the_connection_usable(served):
    _, _, client = served
    async for c in client.generate(GenRequest("half", [1], 50)):
        if c.token_ids[0] == 3:
            break
    assert await tokens(client, GenRequest("next", [1], 3, seed=1)) == [1, 2, 3]


async def test_a_connection_without_the_token_or_with_a_bad_frame_gets_nothing(served):
    engine, server, _ = served
    wrong = StreamClient(dataclasses.replace(server.endpoint, token="0" * 32))
    with pytest.raises(WorkerLost):
        await tokens(wrong, GenRequest("sneak", [1], 3))
    reader, writer = await asyncio.open_connection(server.endpoint.host, server.endpoint.port)
    writer.write(wire.hello(server.endpoint.token).encode() + struct.pack("!I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
    writer.close()
    assert engine.closed == []


async def test_both_ends_probe_a_silent_peer(served):
    """TCP keepalive on both ends: a peer that vanishes without closing (its node lost) is found."""
    import socket

    _, server, client = served
    assert await tokens(client, GenRequest("x", [1], 1)) == [0]
    ends = [client.conn.writer.get_extra_info("socket")] + [w.get_extra_info("socket") for w in server.open]
    assert len(ends) == 2
    for sock in ends:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == wire.KEEPALIVE_IDLE_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == wire.KEEPALIVE_PROBES
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == wire.PEER_LOST_S * 1000
