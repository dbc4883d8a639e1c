"""Feeds the KV index from the engines' own event streams (ZMQ), one thread per worker.

Each worker's vLLM engine publishes ``KVEventBatch``es (msgpack, numbered) on a PUB socket
and keeps recent ones for replay on a ROUTER socket (vllm/distributed/kv_events.py,
``ZmqEventPublisher``). A ``KVEventSubscriber`` connects to both, asks for a replay from the
first batch its index lacks, then follows the live stream; a gap in the numbering is filled
by another replay, or, where the engine no longer has those batches, by a resync of that
worker's view (routing/kv_index.py). Every ingress replica and driver runs its own
subscribers, so each has the same view without a round trip per placement.
"""
from __future__ import annotations

import logging
import threading

import msgpack
import zmq

from orchestrator.protocol.engine import KV_EVENTS_END_SEQ, KVEndpoints
from orchestrator.routing.kv_index import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent, KVIndex

log = logging.getLogger(__name__)
REPLAY_TIMEOUT_MS = 2000
POLL_MS = 100


def parse_batch(payload: bytes) -> list[KVEvent]:
    """A ``KVEventBatch`` (msgspec: an array ``[ts, events, dp_rank?]``, each event a map tagged
    by ``type``) as the index's events; unknown event types are skipped."""
    batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    return [e for e in (_event(raw) for raw in batch[1]) if e is not None]


def _event(raw: dict) -> KVEvent | None:
    kind = raw.get("type")
    if kind == "BlockStored":
        return BlockStored(raw["block_hashes"], raw.get("parent_block_hash"), raw["token_ids"], raw["block_size"])
    if kind == "BlockRemoved":
        return BlockRemoved(raw["block_hashes"])
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


class SharedIndex:
    """A KVIndex guarded by a lock: subscriber threads write, the event loop reads."""

    def __init__(self, index: KVIndex):
        self.index = index
        self.lock = threading.Lock()

    def matched(self, ids: list[int], workers: list[str]) -> dict[str, int]:
        with self.lock:
            return self.index.matched(ids, workers)

    def forget(self, worker: str) -> None:
        with self.lock:
            self.index.forget(worker)

    def applied(self, worker: str) -> int:
        """The last of ``worker``'s event batches this index has applied (-1: none)."""
        with self.lock:
            return self.index.next_seq(worker) - 1


class KVEventSubscriber(threading.Thread):
    def __init__(self, worker: str, endpoints: KVEndpoints, shared: SharedIndex):
        super().__init__(name=f"loom-kv-events-{worker}", daemon=True)
        self.worker = worker
        self.endpoints = endpoints
        self.shared = shared
        self.stopping = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.endpoints.publish)
        try:
            self._replay(ctx, None)  # everything before the subscription took hold
            while not self.stopping.is_set():
                if sub.poll(POLL_MS):
                    _, seq, payload = sub.recv_multipart()
                    self._live(ctx, int.from_bytes(seq, "big"), parse_batch(payload))
        except Exception:
            log.exception("KV event subscriber for %s stopped", self.worker)
        finally:
            sub.close(linger=0)

    def stop(self) -> None:
        self.stopping.set()

    def _live(self, ctx, seq: int, events: list[KVEvent]) -> None:
        with self.shared.lock:
            if self.shared.index.apply(self.worker, seq, events):
                return
        self._replay(ctx, seq)
        with self.shared.lock:
            if not self.shared.index.apply(self.worker, seq, events):  # the engine no longer has the gap
                log.warning("KV events of %s: batches lost before %d; view resynced", self.worker, seq)
                self.shared.index.resync(self.worker, seq, events)

    def _replay(self, ctx, before: int | None) -> None:
        """Ask the engine for the batches from the first one the index lacks, apply them in order."""
        with self.shared.lock:
            start = self.shared.index.next_seq(self.worker)
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(self.endpoints.replay)
        try:
            dealer.send_multipart((b"", start.to_bytes(8, "big")))
            while dealer.poll(REPLAY_TIMEOUT_MS):
                frames = dealer.recv_multipart()
                if frames[-2] == KV_EVENTS_END_SEQ:
                    return
                seq = int.from_bytes(frames[-2], "big")
                if before is not None and seq >= before:
                    continue
                events = parse_batch(frames[-1])
                with self.shared.lock:
                    if not self.shared.index.apply(self.worker, seq, events):  # older ones are gone
                        self.shared.index.resync(self.worker, seq, events)
            log.warning("KV events of %s: no replay answer in %d ms", self.worker, REPLAY_TIMEOUT_MS)
        finally:
            dealer.close(linger=0)
