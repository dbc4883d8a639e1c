"""The KV index (orchestrator/routing/kv_index.py): what each engine reported, keyed the same everywhere."""
from __future__ import annotations

from orchestrator.routing.kv_index import AllBlocksCleared, BlockRemoved, BlockStored, KVIndex, block_keys

B = 4  # tokens per block in these tests
PROMPT = list(range(100, 114))  # 3 full blocks + 2 tokens


def stored(hashes, parent, tokens):
    return BlockStored(hashes, parent, tokens, B)


def index_holding_prompt() -> KVIndex:
    idx = KVIndex(B)
    assert idx.apply("w0", 0, [stored([b"h1", b"h2"], None, PROMPT[:8])])
    assert idx.apply("w0", 1, [stored([b"h3"], b"h2", PROMPT[8:12])])
    return idx


def test_keys_chain_whole_blocks_and_do_not_depend_on_the_process():
    keys = block_keys(PROMPT, B)
    assert len(keys) == 3 and keys == block_keys(PROMPT[:12], B)
    assert block_keys([0] + PROMPT[1:], B)[1] != keys[1]  # a block's key covers everything before it
    assert keys[0].hex() == block_keys(list(range(100, 104)), B)[0].hex()


def test_held_tokens_are_the_leading_whole_blocks_reported():
    idx = index_holding_prompt()
    assert idx.matched(PROMPT, ["w0", "w1"]) == {"w0": 12, "w1": 0}
    assert idx.matched(PROMPT[:6] + [7] * 8, ["w0"]) == {"w0": 4}


def test_evicted_blocks_are_forgotten_and_a_hole_ends_the_prefix():
    idx = index_holding_prompt()
    assert idx.apply("w0", 2, [BlockRemoved([b"h2"])])
    assert idx.matched(PROMPT, ["w0"]) == {"w0": 4}  # block 3 is still there, but after a hole
    assert idx.apply("w0", 3, [AllBlocksCleared()])
    assert idx.matched(PROMPT, ["w0"]) == {"w0": 0}


def test_a_gap_is_refused_until_replayed_or_resynced():
    idx = index_holding_prompt()
    assert not idx.apply("w0", 3, [BlockRemoved([b"h1"])])  # batch 2 is missing
    assert idx.matched(PROMPT, ["w0"]) == {"w0": 12} and idx.next_seq("w0") == 2
    assert idx.apply("w0", 1, [])  # an old batch again (a replay overlapping the live stream)
    idx.resync("w0", 3, [stored([b"g1"], None, PROMPT[:4])])
    assert idx.matched(PROMPT, ["w0"]) == {"w0": 4} and idx.views["w0"].resyncs == 1 and idx.next_seq("w0") == 4


def test_a_block_whose_parent_was_never_seen_is_left_out():
    idx = KVIndex(B)
    idx.resync("w0", 7, [stored([b"h3"], b"h2", PROMPT[8:12])])
    assert idx.matched(PROMPT, ["w0"]) == {"w0": 0} and idx.views["w0"].unkeyed == 1


def test_a_first_batch_that_is_not_batch_zero_is_a_gap():
    assert not KVIndex(B).apply("w0", 5, [])
