"""The engine stream's wire: typed frames, msgpack-encoded, each behind a 4-byte length.

One TCP connection per (driver, worker) carries every request the driver runs on that worker:
the driver says ``hello`` (the worker's token, from its ``WorkerInfo``), then sends a
``generate`` frame per request; the worker answers with that request's ``chunk`` frames, an
``end`` frame where the stream ended unfinished (aborted), or an ``error`` frame. Frames of
different requests interleave; each names its request.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import asdict, dataclass
from enum import StrEnum

import msgpack

from orchestrator.protocol.generation import GenChunk, GenRequest

HEADER = struct.Struct("!I")
MAX_FRAME = 64 << 20  # a frame longer than this is a broken or foreign peer
# A peer gone without closing (its pod or node lost: no FIN, no RST) is found by TCP keepalive
# while the connection is idle: after this long idle, probes this often, this many unanswered;
# and while data sent to it waits for its ack, by TCP_USER_TIMEOUT (as long), where TCP would
# otherwise retransmit for about 15 minutes (tcp_retries2) before giving up
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 5, 2, 3
PEER_LOST_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES


class FrameKind(StrEnum):
    HELLO = "hello"  # body: {"token"}
    GENERATE = "generate"  # body: a GenRequest
    CHUNK = "chunk"  # body: a GenChunk
    END = "end"  # the request's stream ended unfinished (aborted)
    ERROR = "error"  # body: {"error"}


@dataclass
class Frame:
    kind: FrameKind
    request_id: str = ""
    body: dict | None = None

    def encode(self) -> bytes:
        payload = msgpack.packb(asdict(self), use_bin_type=True)
        return HEADER.pack(len(payload)) + payload

    def request(self) -> GenRequest:
        return GenRequest(**self.body)

    def chunk(self) -> GenChunk:
        return GenChunk(**self.body)


def hello(token: str) -> Frame:
    return Frame(FrameKind.HELLO, body={"token": token})


def generate(req: GenRequest) -> Frame:
    return Frame(FrameKind.GENERATE, req.request_id, asdict(req))


def chunk(c: GenChunk) -> Frame:
    return Frame(FrameKind.CHUNK, c.request_id, asdict(c))


def end(request_id: str) -> Frame:
    return Frame(FrameKind.END, request_id)


def error(request_id: str, e: BaseException) -> Frame:
    return Frame(FrameKind.ERROR, request_id, {"error": f"{type(e).__name__}: {e}"})


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame; None at a clean end of the stream (raises on a broken one)."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes (at most {MAX_FRAME})")
    d = msgpack.unpackb(await reader.readexactly(size), raw=False)
    return Frame(**{**d, "kind": FrameKind(d["kind"])})


def keep_alive(writer: asyncio.StreamWriter) -> None:
    """Turns on TCP keepalive and a user timeout for the connection, so that a read from a peer
    that vanished fails within about PEER_LOST_S seconds, whether or not data was in flight."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES), ("TCP_USER_TIMEOUT", PEER_LOST_S * 1000)):
        if hasattr(socket, name):  # Linux has all three
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
