from orchestrator.placement import BLOCK, Placement, PrefixIndex, block_hashes


def test_block_hashes_cover_whole_prefixes():
    a = list(range(2 * BLOCK + 8))
    assert len(block_hashes(a)) == 2
    b = a[:BLOCK] + [999] + a[BLOCK + 1:]
    assert block_hashes(a)[0] == block_hashes(b)[0] and block_hashes(a)[1] != block_hashes(b)[1]


def test_prefix_index_counts_leading_cached_tokens():
    idx = PrefixIndex(block=16)
    idx.record("w0", list(range(48)))
    assert idx.cached_tokens("w0", list(range(40)) + [7] * 20) == 32
    assert idx.cached_tokens("w1", list(range(48))) == 0


def test_placement_prefers_the_worker_holding_the_prefix_until_it_is_overloaded():
    p = Placement(["w0", "w1"], queued_tokens_per_request=10)
    prefix = list(range(64))
    p.started("w0", prefix)
    p.finished("w0", prefix)
    assert p.choose(prefix + [1, 2]) == "w0"
    for _ in range(7):
        p.started("w0", prefix)
    assert p.choose(prefix + [1, 2]) == "w1"
