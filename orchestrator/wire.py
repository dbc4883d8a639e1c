"""The engine stream's wire: typed frames, msgpack-encoded, each behind a 4-byte length.

One TCP connection per (driver, worker) carries every request the driver runs on that worker:
the driver says ``hello`` (the worker's token, from its ``WorkerInfo``), then sends a
``generate`` frame per request; the worker answers with that request's ``chunk`` frames, an
``end`` frame where the stream ended unfinished (aborted), or an ``error`` frame. Frames of
different requests interleave; each names its request.
"""
from __future__ import annotations

import asyncio
import struct
from dataclasses import asdict, dataclass

import msgpack

from orchestrator.generation import GenChunk, GenRequest

HEADER = struct.Struct("!I")
MAX_FRAME = 64 << 20  # a frame longer than this is a broken or foreign peer


@dataclass
class Frame:
    kind: str  # hello | generate | chunk | end | error
    request_id: str = ""
    body: dict | None = None  # hello: {"token"}; generate: a GenRequest; chunk: a GenChunk; error: {"error"}

    def encode(self) -> bytes:
        payload = msgpack.packb(asdict(self), use_bin_type=True)
        return HEADER.pack(len(payload)) + payload

    def request(self) -> GenRequest:
        return GenRequest(**self.body)

    def chunk(self) -> GenChunk:
        return GenChunk(**self.body)


def hello(token: str) -> Frame:
    return Frame("hello", body={"token": token})


def generate(req: GenRequest) -> Frame:
    return Frame("generate", req.request_id, asdict(req))


def chunk(c: GenChunk) -> Frame:
    return Frame("chunk", c.request_id, asdict(c))


def error(request_id: str, e: BaseException) -> Frame:
    return Frame("error", request_id, {"error": f"{type(e).__name__}: {e}"})


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
    return Frame(**msgpack.unpackb(await reader.readexactly(size), raw=False))
