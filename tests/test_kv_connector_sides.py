"""The KV connector's pure halves (workers/kv): the scheduler half's token counts, block
choices and holds, with stand-ins for vLLM's request and block objects; the holder's transfer
states with an explicit clock; the pages' gather/scatter on real tensors; the control codec."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from orchestrator.protocol.kv import HOLD_KEY, PULL_KEY, KVHold
from workers.kv.messages import Connect, Pull, Release, Reply, decode, encode
from workers.kv.scheduler_side import HolderAddress, SchedulerSide
from workers.kv.worker_side import BlockPages, Holds

BS = 32


@dataclass
class Req:
    request_id: str
    prompt_token_ids: list[int]
    kv_transfer_params: dict | None = None


@dataclass
class Block:
    block_id: int
    block_hash: object = None


@dataclass
class Blocks:
    """vLLM's KVCacheBlocks as the scheduler half reads it: one group; cached blocks are hashed."""

    blocks: list[Block] = field(default_factory=list)

    def get_block_ids(self):
        return ([b.block_id for b in self.blocks],)

    def get_unhashed_block_ids(self):
        return [b.block_id for b in self.blocks if b.block_hash is None]


def side() -> SchedulerSide:
    return SchedulerSide(HolderAddress("w0", "127.0.0.1", [5555]), BS, 4096, hold_s=30.0)


def hold(tokens: int = 128, blocks=(11, 12, 13, 14)) -> KVHold:
    return KVHold("w1", "127.0.0.1", [6666], "t-hold-abc", list(blocks), tokens, 4096, 30.0)


def test_a_request_without_params_loads_nothing():
    assert side().matched(Req("r", list(range(200))), 0) == (0, False)


@pytest.mark.parametrize("prompt,local,expected", [
    (200, 0, (128, True)),   # all 4 held blocks, asynchronously
    (200, 64, (64, True)),   # this engine had 2 of them: the other 2
    (200, 128, (0, False)),  # it had them all
    (129, 0, (128, True)),   # the last token is left to compute
    (128, 0, (96, True)),    # a prompt of exactly the held blocks: the last block is computed here
])
def test_matched_counts_the_held_tokens_this_engine_lacks(prompt, local, expected):
    req = Req("r", list(range(prompt)), hold().to_params())
    s = side()
    assert s.matched(req, local) == expected
    assert s.matched(req, local) == expected and PULL_KEY in req.kv_transfer_params  # side-effect free


def test_after_alloc_pulls_the_held_blocks_this_engine_lacks_into_its_fresh_blocks():
    s, req = side(), Req("r", list(range(200)), hold().to_params())
    blocks = Blocks([Block(3, "h"), Block(4, "h"), Block(20), Block(21)])  # 2 cached here, 2 fresh
    s.after_alloc(req, blocks, 64)
    plan = s.step_plan()
    assert [(p.remote_block_ids, p.local_block_ids) for p in plan.pulls] == [([13, 14], [20, 21])]
    assert PULL_KEY not in req.kv_transfer_params  # once: the reschedule after the load is a no-op
    s.after_alloc(req, blocks, 0)
    assert s.step_plan().pulls == [] and s.matched(req, 128) == (0, False)


def test_a_hold_this_engine_does_not_need_is_released():
    s, req = side(), Req("r", list(range(200)), hold().to_params())
    s.after_alloc(req, Blocks([Block(i, "h") for i in range(4)]), 0)
    assert s.step_plan().releases == [hold()]


def test_a_target_aborted_before_allocation_releases_its_hold():
    s, req = side(), Req("r", list(range(200)), hold().to_params())
    assert s.finished(req, [], stopped_normally=False) == (False, None)
    assert s.step_plan().releases == [hold()]


def test_a_holder_keeps_its_full_blocks_and_says_where_they_are():
    s = side()
    req = Req("t-hold-abc", list(range(129)), {HOLD_KEY: {"tokens": 128, "hold_s": None}})
    keep, params = s.finished(req, [7, 8, 9, 10, 11], stopped_normally=True)
    assert keep and KVHold(**params[HOLD_KEY]) == KVHold("w0", "127.0.0.1", [5555], "t-hold-abc",
                                                          [7, 8, 9, 10], 128, 4096, 30.0)
    assert s.step_plan().holds == {"t-hold-abc": 30.0}


@pytest.mark.parametrize("normal,tokens,blocks", [(False, 128, [7, 8, 9, 10, 11]), (True, 31, [7]), (True, 128, [])])
def test_an_aborted_or_blockless_holder_keeps_nothing(normal, tokens, blocks):
    s = side()
    req = Req("h", list(range(129)), {HOLD_KEY: {"tokens": tokens, "hold_s": 2.0}})
    assert s.finished(req, blocks, stopped_normally=normal) == (False, None)
    assert s.step_plan().holds == {}


def test_holds_are_reported_once_sent_released_or_expired_and_never_served_after():
    h = Holds()
    h.add({"a": 5.0, "b": 5.0, "c": 5.0, "d": 5.0}, now=100.0)
    assert h.claim("a")
    h.close("a")  # sent
    h.release("b")
    assert h.claim("d")  # being sent: neither released nor expired under the sender
    h.release("d")
    assert h.done(now=101.0) == {"a", "b"}
    assert h.done(now=200.0) == {"c"}  # expired; d is still being sent
    assert not h.claim("c") and not h.claim("a")  # closed: a late pull is refused
    h.close("d")
    assert h.done(now=200.0) == {"d"} and h.done(now=300.0) == set()


def test_a_pull_may_come_before_the_hold_is_known_and_is_reported_once_it_is():
    h = Holds()
    assert h.claim("early")
    h.close("early")
    assert h.done(now=0.0) == set()  # vLLM has not told this side of the hold yet
    h.add({"early": 5.0}, now=1.0)
    assert h.done(now=1.0) == {"early"}


@pytest.mark.parametrize("shape,dim", [((16, 2, 32, 8), 0), ((2, 16, 32, 2, 4), 1)])
def test_pages_move_whole_blocks_between_caches_of_either_layout(shape, dim):
    src = {f"layer.{i}": torch.randn(shape) for i in range(3)}
    dst = {k: torch.zeros(shape) for k in src}
    staged = BlockPages.of(src, 16).gather([3, 9])
    target = BlockPages.of(dst, 16)
    assert target.block_dim == dim
    target.scatter([0, 5], staged)
    for k, pages in src.items():
        assert torch.equal(dst[k].select(dim, 0), pages.select(dim, 3))
        assert torch.equal(dst[k].select(dim, 5), pages.select(dim, 9))
        assert dst[k].select(dim, 1).abs().sum() == 0  # nothing else written


@pytest.mark.parametrize("msg", [Connect("w0/ab", "10.0.0.2", 4000, "gloo"), Pull("t1", [1, 2], "w0/ab", 3),
                                 Release("t1"), Reply(True, shape=[2, 3], dtype="float32")])
def test_control_messages_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_an_unknown_control_message_is_refused():
    import msgpack

    with pytest.raises(ValueError, match="unknown KV control message"):
        decode(msgpack.packb({"kind": "Exec", "cmd": "rm"}))


def test_the_side_channel_answers_after_malformed_frames():
    import zmq

    from workers.kv.messages import Release, Reply
    from workers.kv.transport import SideChannel, request

    channel = SideChannel("127.0.0.1", 0, lambda msg: Reply(True, type(msg).__name__))
    try:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{channel.port}")
        sock.send_multipart([b"two", b"frames"])  # not one message: the server must live on
        sock.send(b"\xc1 not msgpack")
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        assert "error" in decode_error(sock.recv())  # the undecodable message is answered, with why
        sock.close()
        assert request("127.0.0.1", channel.port, Release("t"), 5.0) == Reply(True, "Release")
    finally:
        channel.close()


def decode_error(raw: bytes) -> str:
    from workers.kv.messages import decode

    reply = decode(raw)
    assert not reply.ok
    return reply.error.lower()
