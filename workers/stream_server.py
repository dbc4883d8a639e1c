"""A worker's engine requests served over its own TCP socket (orchestrator/protocol/wire.py), not
as Ray actor calls: a Ray call and a Ray object per streamed chunk cost far more than a frame
(docs/experiments.md).

Each connection first presents the worker's token; each ``generate`` frame then runs as a task
of its own, its chunks written back as they come. A connection that closes takes its requests
with it: their tasks are cancelled, which aborts them in the engine.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable

from orchestrator.protocol import wire
from orchestrator.protocol.engine import StreamEndpoint
from orchestrator.protocol.generation import GenChunk, GenRequest

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0

Generate = Callable[[GenRequest], AsyncIterator[GenChunk]]


class StreamServer:
    def __init__(self, generate: Generate, host: str):
        self.generate = generate
        self.host = host
        self.token = secrets.token_hex(16)
        self.server: asyncio.Server | None = None
        self.endpoint: StreamEndpoint | None = None
        self.open: set[asyncio.StreamWriter] = set()  # connections being served

    async def start(self) -> StreamEndpoint:
        """Listens on a free port of ``host`` (once); returns where, with the token."""
        if self.endpoint is None:
            self.server = await asyncio.start_server(self._connection, self.host, 0)
            self.endpoint = StreamEndpoint(self.host, self.server.sockets[0].getsockname()[1], self.token)
        return self.endpoint

    def close(self) -> None:
        """Stops listening and drops every connection (their drivers see the worker gone)."""
        if self.server is not None:
            self.server.close()
        for writer in self.open:
            writer.transport.abort()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: dict[str, asyncio.Task] = {}
        wire.keep_alive(writer)  # a driver gone without closing is found, and its requests stopped
        self.open.add(writer)
        try:
            first = await asyncio.wait_for(wire.read_frame(reader), HELLO_TIMEOUT_S)
            if first is None or first.kind != wire.FrameKind.HELLO or (first.body or {}).get("token") != self.token:
                log.warning("a stream connection without this worker's token was closed")
                return
            while (frame := await wire.read_frame(reader)) is not None:
                if frame.kind != wire.FrameKind.GENERATE:
                    raise ValueError(f"a '{frame.kind}' frame where only generate frames come")
                task = asyncio.ensure_future(self._serve(frame.request(), writer))
                tasks[frame.request_id] = task
                task.add_done_callback(lambda _, rid=frame.request_id: tasks.pop(rid, None))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the driver went away: its requests go with it
        except Exception:  # a broken peer: logged, its connection closed
            log.exception("a stream connection sent a bad frame")
        finally:
            for task in list(tasks.values()):
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            self.open.discard(writer)
            writer.close()

    async def _serve(self, req: GenRequest, writer: asyncio.StreamWriter) -> None:
        finished = False
        try:
            async for c in self.generate(req):
                finished = c.finished
                await _send(writer, wire.chunk(c))
            if not finished:
                await _send(writer, wire.end(req.request_id))
        except ConnectionError:
            return  # the driver went away: its connection's end cancels the rest
        except Exception as e:  # noqa: BLE001 - the engine's failure is the request's answer
            with contextlib.suppress(ConnectionError):
                await _send(writer, wire.error(req.request_id, e))


async def _send(writer: asyncio.StreamWriter, frame: wire.Frame) -> None:
    writer.write(frame.encode())
    await writer.drain()
