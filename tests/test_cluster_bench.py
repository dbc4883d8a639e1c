"""bench.cluster's pure parts: the routers for the client-side baseline (round robin, and SGLang's
cache-aware policy: longest routed prefix above a threshold, else the smallest tree; least loaded
when the load is imbalanced), and its rows as a plot (rounds averaged)."""
from __future__ import annotations

import pytest

from bench.cluster_plot import mean_by_rate, plot
from bench.cluster_routers import CacheAware, RoundRobin

B = 4


def ids(*blocks: int) -> list[int]:
    """A prompt of whole blocks, block k all token k."""
    return [t for b in blocks for t in [b] * B]


def test_round_robin_takes_each_worker_in_turn():
    r = RoundRobin(["a", "b", "c"])
    assert [r.choose(ids(1)) for _ in range(4)] == ["a", "b", "c", "a"]


def test_cache_aware_follows_the_longest_routed_prefix_above_its_threshold():
    r = CacheAware(["a", "b"], B)
    first = r.choose(ids(1, 2, 3, 4))
    assert r.choose(ids(1, 2, 3, 9)) == first  # 3 of 4 blocks routed there before
    other = r.choose(ids(7, 8, 9, 10))  # nothing matches: the smaller tree
    assert other != first
    assert r.choose(ids(1, 5, 6, 11)) == other  # 1 of 4 blocks (0.25 <= 0.3): the smaller tree again


def test_cache_aware_goes_to_the_least_loaded_when_the_load_is_imbalanced():
    r = CacheAware(["a", "b"], B, balance_abs=2, balance_rel=1.5)
    home = r.choose(ids(1, 2, 3))
    for _ in range(3):
        r.started(home)
    assert r.choose(ids(1, 2)) != home  # 3 - 0 > 2 and 3 > 1.5 x 0
    r.finished(home)
    assert r.choose(ids(1, 2, 3)) == home  # 2 - 0 is not over 2: the longest prefix wins again


def row(system: str, workers: int, rate: float, goodput: float, p99: float, r: int = 0) -> dict:
    return {"system": system, "workers": workers, "rate": rate, "goodput": goodput, "p50_s": p99 / 2, "p99_s": p99,
            "round": r}


def test_the_rows_become_a_png_and_rounds_are_averaged(tmp_path):
    rows = [row(s, n, rate, rate * 0.9, 10 + rate) for s in ("loom", "client-rr", "client-cache-aware")
            for n in (16, 64) for rate in (1.0, 4.0)]
    out = tmp_path / "cluster.png"
    plot(rows, "a test machine", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mean_by_rate([row("loom", 16, 1.0, 1.0, 10.0), row("loom", 16, 1.0, 2.0, 20.0, r=1)]) == {
        1.0: {"goodput": 1.5, "p50_s": 7.5, "p99_s": 15.0}}
    with pytest.raises(ValueError, match="no rows"):
        plot([], "a test machine", out)
