"""bench/peers_plot.py draws bench.peers' rows as a PNG (rounds averaged); bench.peers pairs
Loom with each other system within a round."""
import pytest

from bench.peers import ratios
from bench.peers_plot import means, plot


def row(workload, system, concurrency, mean_s, qps):
    return {"workload": workload, "system": system, "concurrency": concurrency, "mean_s": mean_s,
            "questions_per_s": qps}


def test_the_rows_become_a_png(tmp_path):
    rows = [row(w, s, c, 0.5 * c, 2.0 * c) for w in ("mix", "five") for s in ("plain", "client", "loom")
            for c in (1, 8, 32)]
    out = tmp_path / "peers.png"
    plot(rows, "a test machine", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_rows_is_named():
    with pytest.raises(ValueError, match="no rows"):
        plot([], "a test machine", "unused.png")


def test_rounds_are_averaged_for_the_plot():
    rows = [{**row("mix", "loom", 1, 0.4, 2.0), "round": 1}, {**row("mix", "loom", 1, 0.6, 3.0), "round": 2},
            {**row("mix", "plain", 1, 0.5, 2.0), "round": 1}]
    assert sorted(means(rows), key=lambda r: r["system"]) == [row("mix", "loom", 1, 0.5, 2.5),
                                                              row("mix", "plain", 1, 0.5, 2.0)]


def test_loom_is_compared_with_each_system_within_each_round():
    rows = [{**row("five", s, 8, lat, qps), "round": r} for r, s, lat, qps in [
        (1, "plain", 1.0, 4.0), (1, "client", 0.5, 8.0), (1, "loom", 0.8, 5.0),
        (2, "plain", 2.0, 2.0), (2, "client", 1.0, 4.0), (2, "loom", 1.2, 3.0),
        (3, "plain", 1.0, 4.0)]]  # a round Loom did not run: no ratio
    assert ratios(rows) == [{"workload": "five", "concurrency": 8,
                             "latency_vs_plain": [0.8, 0.6], "throughput_vs_plain": [1.25, 1.5],
                             "latency_vs_client": [1.6, 1.2], "throughput_vs_client": [0.625, 0.75]}]
