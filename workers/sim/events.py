"""A simulated engine's KV events on the wire vLLM's ``ZmqEventPublisher`` uses, so Loom's
subscribers (orchestrator/routing/kv_events.py) read a simulated engine as a real one.

PUB socket: one message per step with events, frames (topic ``b""``, sequence number as 8 bytes
big-endian from 0, msgpack ``[ts, [event map, ...], None]``), each event a map tagged by
``type``. ROUTER socket: a client sends ``(b"", start)`` and gets every buffered batch numbered
``start`` or later as ``(b"", topic, seq, payload)``, then ``(b"", b"", -1, b"")``. Runs on the
engine's event loop (zmq.asyncio); binds free ports on the worker's address.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import msgpack
import zmq
import zmq.asyncio

from orchestrator.protocol.engine import KV_EVENTS_END_SEQ, KVEndpoints
from workers.sim.block_cache import CacheEvent, EventKind

TOPIC = b""
BUFFER_BATCHES = 10_000  # kept for replay (vLLM's buffer_steps)


def event_map(event: CacheEvent, block_size: int) -> dict:
    if event.kind is EventKind.STORED:
        return {"type": event.kind.value, "block_hashes": event.block_hashes,
                "parent_block_hash": event.parent_block_hash, "token_ids": event.token_ids,
                "block_size": block_size, "lora_id": None, "medium": "GPU"}
    if event.kind is EventKind.REMOVED:
        return {"type": event.kind.value, "block_hashes": event.block_hashes, "medium": "GPU"}
    return {"type": event.kind.value}


class EventPublisher:
    def __init__(self, host: str, block_size: int):
        self.ctx = zmq.asyncio.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.endpoints = KVEndpoints(self._bind(self.pub, host), self._bind(self.router, host))
        self.block_size = block_size
        self.seq = 0
        self.buffer: deque[tuple[bytes, bytes]] = deque(maxlen=BUFFER_BATCHES)
        self.replays: asyncio.Task | None = None

    @staticmethod
    def _bind(socket, host: str) -> str:
        return f"tcp://{host}:{socket.bind_to_random_port(f'tcp://{host}')}"

    async def publish(self, events: list[CacheEvent]) -> None:
        """One batch (nothing when ``events`` is empty)."""
        if not events:
            return
        payload = msgpack.packb([time.time(), [event_map(e, self.block_size) for e in events], None])
        seq = self.seq.to_bytes(8, "big")
        self.seq += 1
        self.buffer.append((seq, payload))
        await self.pub.send_multipart((TOPIC, seq, payload))

    async def _serve_replays(self) -> None:
        while True:
            client, _, start = await self.router.recv_multipart()
            first = int.from_bytes(start, "big", signed=True)
            for seq, payload in list(self.buffer):
                if int.from_bytes(seq, "big") >= first:
                    await self.router.send_multipart((client, b"", TOPIC, seq, payload))
            await self.router.send_multipart((client, b"", b"", KV_EVENTS_END_SEQ, b""))

    def start(self) -> None:
        """Answers replays from now on (a subscriber asks for one as it connects); on the loop."""
        if self.replays is None:
            self.replays = asyncio.create_task(self._serve_replays())

    def close(self) -> None:
        if self.replays is not None:
            self.replays.cancel()
        with contextlib.suppress(zmq.ZMQError):
            self.pub.close(linger=0)
            self.router.close(linger=0)
        self.ctx.term()
