"""bench.cluster's rows as a plot (SIMULATED figures): one column per worker count, goodput
(top) and p99 latency (bottom) against the arrival rate, one line per system (the mean of its
rounds); the machine and profile in the title."""
from __future__ import annotations

import statistics
from pathlib import Path

LABELS = {"loom": "Loom", "client-rr": "client fork/join, round robin",
          "client-cache-aware": "client fork/join, cache-aware router"}


def plot(rows: list[dict], title: str, out: Path) -> None:
    """Writes the PNG; ValueError when ``rows`` has nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["workers"] for r in rows})
    if not sizes:
        raise ValueError("no rows to plot")
    fig, axes = plt.subplots(2, len(sizes), figsize=(5 * len(sizes), 7), squeeze=False)
    for col, n in enumerate(sizes):
        for system, label in LABELS.items():
            mine = mean_by_rate([r for r in rows if r["workers"] == n and r["system"] == system])
            if mine:
                rates = sorted(mine)
                axes[0][col].plot(rates, [mine[x]["goodput"] for x in rates], marker="o", label=label)
                axes[1][col].plot(rates, [mine[x]["p99_s"] for x in rates], marker="o", label=label)
        axes[0][col].set_title(f"{n} workers: goodput (jobs/s in target)")
        axes[1][col].set_title(f"{n} workers: p99 latency (s)")
        for ax in axes[:, col]:
            ax.set_xlabel("arrivals per second")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"bench.cluster, SIMULATED engines: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def mean_by_rate(rows: list[dict]) -> dict[float, dict]:
    by: dict[float, list[dict]] = {}
    for r in rows:
        by.setdefault(r["rate"], []).append(r)
    return {rate: {k: statistics.mean(r[k] for r in group) for k in ("goodput", "p99_s")} for rate, group in by.items()}
