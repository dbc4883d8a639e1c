"""The driver's side of a worker's engine stream (orchestrator/protocol/wire.py; the worker's side is
workers/stream_server.py): one connection per worker and event loop, requests multiplexed on it.

A broken connection (the worker's process died, or cannot be reached; a worker gone without
closing it is found by TCP keepalive and a user timeout, wire.keep_alive) fails every request on it with
``WorkerLost``, which the engine client treats as it treats a dead Ray actor: the request is
placed again. An engine's failure for one request comes back as ``WorkerRequestFailed``.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from orchestrator.protocol import wire
from orchestrator.protocol.engine import StreamEndpoint
from orchestrator.protocol.generation import GenChunk, GenRequest

CONNECT_TIMEOUT_S = 10.0


class WorkerLost(ConnectionError):
    """The worker's stream broke or could not be opened."""


class WorkerRequestFailed(RuntimeError):
    """The worker's engine raised for this request (its message says what)."""


class StreamClient:
    def __init__(self, endpoint: StreamEndpoint):
        self.endpoint = endpoint
        self.conn: _Connection | None = None
        self.connecting: asyncio.Task | None = None

    async def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]:
        """The request's chunks as the worker sends them, up to the finished one."""
        conn = await self._connection()
        queue = conn.open(req.request_id)
        try:
            conn.send(wire.generate(req))
            while True:
                frame = await queue.get()
                if isinstance(frame, BaseException):
                    raise frame
                if frame.kind == wire.FrameKind.ERROR:
                    raise WorkerRequestFailed(f"worker at {self.endpoint.host}:{self.endpoint.port}: {frame.body['error']}")
                if frame.kind == wire.FrameKind.END:
                    return
                c = frame.chunk()
                yield c
                if c.finished:
                    return
        finally:
            conn.queues.pop(req.request_id, None)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    async def _connection(self) -> _Connection:
        """This loop's live connection, opened once however many requests ask at the same time."""
        loop = asyncio.get_running_loop()
        if self.conn is not None and self.conn.alive and self.conn.loop is loop:
            return self.conn
        if self.connecting is None or self.connecting.done() or self.connecting.get_loop() is not loop:
            self.connecting = asyncio.ensure_future(self._connect())
        self.conn = await asyncio.shield(self.connecting)
        return self.conn

    async def _connect(self) -> _Connection:
        e = self.endpoint
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(e.host, e.port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as err:
            raise WorkerLost(f"cannot reach the worker at {e.host}:{e.port}: {err}") from err
        wire.keep_alive(writer)
        writer.write(wire.hello(e.token).encode())
        return _Connection(reader, writer, f"{e.host}:{e.port}")


class _Connection:
    """One open stream: a reader task hands each frame to its request's queue."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str):
        self.writer = writer
        self.where = where
        self.loop = asyncio.get_running_loop()
        self.queues: dict[str, asyncio.Queue] = {}
        self.alive = True
        self.reader = asyncio.ensure_future(self._read(reader))

    def open(self, request_id: str) -> asyncio.Queue:
        if not self.alive:
            raise WorkerLost(f"the stream to the worker at {self.where} is closed")
        self.queues[request_id] = queue = asyncio.Queue()
        return queue

    def send(self, frame: wire.Frame) -> None:
        self.writer.write(frame.encode())

    def close(self) -> None:
        self.alive = False
        if not self.loop.is_closed():
            self.writer.close()
            self.reader.cancel()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        why = "the worker closed it"
        try:
            while (frame := await wire.read_frame(reader)) is not None:
                queue = self.queues.get(frame.request_id)
                if queue is not None:  # else a request its caller gave up on
                    queue.put_nowait(frame)
        except Exception as e:  # noqa: BLE001 - whatever broke the stream fails its requests
            why = f"{type(e).__name__}: {e}"
        finally:
            self.alive = False
            for queue in self.queues.values():
                queue.put_nowait(WorkerLost(f"the stream to the worker at {self.where} broke ({why})"))
            self.writer.close()
