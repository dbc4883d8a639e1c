"""bench.peers' rows as a plot: ``python -m bench.peers_plot docs/bench-peers.json docs/bench-peers.png``.

One column per workload: mean latency (top) and questions per second (bottom) against
concurrency, one line per system (the mean of its rounds); the machine in the title.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import save_figure

SYSTEMS = {"plain": "plain vLLM (threads inline)", "client": "client-side fork/join over vLLM",
           "loom": "Loom (/v1/chat/completions)", "loom-eager": "Loom, forks eager",
           "loom-never": "Loom, forks never"}


def plot(rows: list[dict], machine: str, out: Path) -> None:
    """Writes the PNG; ValueError naming what is missing when ``rows`` has nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = means(rows)
    workloads = sorted({r["workload"] for r in rows})
    if not workloads:
        raise ValueError("no rows to plot")
    fig, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 7), squeeze=False)
    for col, name in enumerate(workloads):
        for system, label in SYSTEMS.items():
            mine = sorted((r for r in rows if r["workload"] == name and r["system"] == system),
                          key=lambda r: r["concurrency"])
            if not mine:
                continue
            levels = [r["concurrency"] for r in mine]
            axes[0][col].plot(levels, [r["mean_s"] for r in mine], marker="o", label=label)
            axes[1][col].plot(levels, [r["questions_per_s"] for r in mine], marker="o", label=label)
        axes[0][col].set_title(f"{name}: mean latency (s)")
        axes[1][col].set_title(f"{name}: questions per second")
        levels = sorted({r["concurrency"] for r in rows if r["workload"] == name})
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.minorticks_off()
            ax.set_xlabel("concurrency")
            ax.grid(alpha=0.3)
    save_figure(fig, f"bench.peers on {machine}", out)


def means(rows: list[dict]) -> list[dict]:
    """One row per workload, system and concurrency: the mean latency and questions per second of
    its rounds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["system"], r["concurrency"]), []).append(r)
    return [{"workload": w, "system": s, "concurrency": c,
             "mean_s": statistics.mean(r["mean_s"] for r in rs),
             "questions_per_s": statistics.mean(r["questions_per_s"] for r in rs)}
            for (w, s, c), rs in groups.items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", type=Path, help="bench.peers --out JSON")
    p.add_argument("png", type=Path)
    args = p.parse_args(argv)
    data = json.loads(args.rows.read_text())
    plot(data["rows"], data["machine"], args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
