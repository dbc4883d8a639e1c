"""bench.cluster's rows as a plot (SIMULATED figures): one column per worker count, goodput,
p50 and p99 latency (top to bottom) against the arrival rate, one line per system (the mean of
its rounds); the machine and profile in the title.

    python -m bench.cluster_plot rows.jsonl docs/bench-cluster.png   # rows: bench.cluster --out
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import save_figure

FIGURES = {"goodput": "goodput (jobs/s in target)", "p50_s": "p50 latency (s)", "p99_s": "p99 latency (s)"}
LABELS = {"loom": "Loom (adaptive forks)", "loom-eager": "Loom, forks eager", "loom-never": "Loom, forks never",
          "client-rr": "client fork/join, round robin",
          "client-cache-aware": "client fork/join, cache-aware router"}


def plot(rows: list[dict], title: str, out: Path) -> None:
    """Writes the PNG; ValueError when ``rows`` has nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["workers"] for r in rows})
    if not sizes:
        raise ValueError("no rows to plot")
    fig, axes = plt.subplots(len(FIGURES), len(sizes), figsize=(5 * len(sizes), 10), squeeze=False)
    for col, n in enumerate(sizes):
        for system, label in LABELS.items():
            mine = mean_by_rate([r for r in rows if r["workers"] == n and r["system"] == system])
            rates = sorted(mine)
            for row, key in enumerate(FIGURES):
                axes[row][col].plot(rates, [mine[x][key] for x in rates], marker="o", label=label)
        for row, name in enumerate(FIGURES.values()):
            axes[row][col].set_title(f"{n} workers: {name}")
        for ax in axes[:, col]:
            ax.set_xlabel("arrivals per second")
            ax.grid(alpha=0.3)
    save_figure(fig, f"bench.cluster, SIMULATED engines: {title}", out)


def mean_by_rate(rows: list[dict]) -> dict[float, dict]:
    by: dict[float, list[dict]] = {}
    for r in rows:
        by.setdefault(r["rate"], []).append(r)
    return {rate: {k: statistics.mean(r[k] for r in group) for k in FIGURES} for rate, group in by.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows")
    p.add_argument("out")
    args = p.parse_args()
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    if not rows:
        p.error(f"no rows in {args.rows}")
    plot(rows, f"{rows[0].get('machine', '')}; profile {rows[0].get('profile', '')}", Path(args.out))


if __name__ == "__main__":
    main()
