"""The subscriber against vLLM's own publisher (ZmqEventPublisher, real sockets on loopback):
the wire format decodes, a late subscriber replays what it missed, a gap is filled by replay,
and batches the publisher no longer has lead to a resync."""
from __future__ import annotations

import contextlib
import time

import pytest
from polling import wait_until
from ports import free_port
from vllm.config import KVEventsConfig
from vllm.distributed.kv_events import BlockRemoved, BlockStored, EventPublisherFactory, KVEventBatch

from orchestrator.protocol.engine import KVEndpoints
from orchestrator.routing.kv_events import KVEventSubscriber, SharedIndex, parse_batch
from orchestrator.routing.kv_index import KVIndex, block_keys

B = 4


def stored(hashes, parent, tokens):
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=B,
                       lora_id=None, medium="GPU", lora_name=None)


@pytest.fixture
def publisher():
    pub, replay = free_port(), free_port()
    cfg = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=f"tcp://*:{pub}",
                         replay_endpoint=f"tcp://*:{replay}", buffer_steps=3)
    p = EventPublisherFactory.create(cfg)
    yield p, KVEndpoints(f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}")
    p.shutdown()


def publish(p, *events):
    p.publish(KVEventBatch(ts=time.time(), events=list(events)))


def published(p, seq: int) -> None:
    """Until the publisher has sent batch ``seq`` (its replay buffer holds it)."""
    wait_for(lambda: bool(p._buffer) and p._buffer[-1][0] == seq)


def wait_for(cond) -> None:
    wait_until(cond, timeout=10.0, every=0.02)


@contextlib.contextmanager
def subscribed(endpoints):
    """A subscriber for worker "w0" on a fresh index, running for the block."""
    shared = SharedIndex(KVIndex(B))
    sub = KVEventSubscriber("w0", endpoints, shared)
    sub.start()
    try:
        yield shared
    finally:
        sub.stop()
        sub.join(5)


def test_vllm_wire_format_decodes():
    import msgspec

    payload = msgspec.msgpack.encode(KVEventBatch(ts=1.0, events=[stored([b"a", 7], None, [1, 2, 3, 4] * 2),
                                                                  BlockRemoved(block_hashes=[7], medium="GPU")]))
    events = parse_batch(payload)
    assert events[0].block_hashes == [b"a", 7] and events[0].token_ids == [1, 2, 3, 4] * 2
    assert events[0].parent_block_hash is None and events[0].block_size == B
    assert events[1].block_hashes == [7]


def test_late_subscriber_replays_then_follows_live(publisher):
    p, endpoints = publisher
    publish(p, stored([b"h1"], None, [1, 2, 3, 4]))  # before anyone listens
    published(p, 0)
    with subscribed(endpoints) as shared:
        wait_for(lambda: shared.index.next_seq("w0") == 1)
        publish(p, stored([b"h2"], b"h1", [5, 6, 7, 8]))
        wait_for(lambda: shared.matched([1, 2, 3, 4, 5, 6, 7, 8], ["w0"]) == {"w0": 8})
        publish(p, BlockRemoved(block_hashes=[b"h1"], medium="GPU"))
        wait_for(lambda: shared.matched([1, 2, 3, 4, 5, 6, 7, 8], ["w0"]) == {"w0": 0})
        assert shared.index.views["w0"].resyncs == 0


def test_batches_the_publisher_no_longer_has_lead_to_a_resync(publisher):
    p, endpoints = publisher
    for i in range(6):  # the replay buffer keeps the last 3
        publish(p, stored([f"old{i}".encode()], None, [9, 9, 9, i]))
    published(p, 5)
    with subscribed(endpoints) as shared:
        wait_for(lambda: shared.index.next_seq("w0") == 6)
        view = shared.index.views["w0"]
        assert view.resyncs == 1  # batches 0..2 are gone: the view starts at 3
        assert shared.matched([9, 9, 9, 5], ["w0"]) == {"w0": 4} and shared.matched([9, 9, 9, 0], ["w0"]) == {"w0": 0}
        assert block_keys([9, 9, 9, 4], B)[0] in view.keys
