"""bench/peers_plot.py draws bench.peers' rows as a PNG."""
import pytest

from bench.peers_plot import plot


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
