"""Parallel vs sequential on the same engine: ``python -m bench.parallel_vs_sequential``.

Runs questions with k products (default 5) one job at a time, first as Loom forks them
(mode parallel), then with the model writing every thread itself (mode sequential), and
prints DESIGN.md's figures: token speedup, wall speedup, parallel efficiency, prefix tokens
served from cache per thread, and the machine it ran on.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from bench.common import machine
from models import task
from orchestrator.driver.records import JobRequest


def question_with(k: int, rng: random.Random) -> task.Question:
    terms = [task.Term(rng.randint(100, 999), rng.randint(2, 9)) for _ in range(k)]
    return task.Question(tuple(terms))


async def run_all(service, qs, mode: str) -> tuple[list, float]:
    records, t0 = [], time.time()
    for q in qs:
        records.append(await service.run(JobRequest(prompt=q.prompt, mode=mode)))
    return records, time.time() - t0


def figures(par: list, seq: list, par_wall: float, seq_wall: float) -> dict:
    total = sum(r.result["total_tokens"] for r in par)
    critical = sum(r.result["critical_path_tokens"] for r in par)
    threads = [n for r in par for n in r.dag["nodes"] if n["kind"] == "thread"]
    engine_critical = sum(_engine_critical(r) for r in par)
    return {
        "jobs": len(par),
        "same_text": all(a.result["text"] == b.result["text"] for a, b in zip(par, seq)),
        "total_tokens": total, "critical_path_tokens": critical,
        "token_speedup": round(total / critical, 3),
        "wall_parallel_s": round(par_wall, 2), "wall_sequential_s": round(seq_wall, 2),
        "sequential_tokens": (seq_tokens := sum(r.result["total_tokens"] for r in seq)),
        "wall_speedup": round(seq_wall / par_wall, 3),
        # the sequential run may write other tokens than the parallel one: scale it to the same count
        "wall_speedup_same_tokens": round(seq_wall * total / seq_tokens / par_wall, 3),
        "parallel_efficiency": round((seq_wall * total / seq_tokens / par_wall) / (total / critical), 3),
        "thread_prompt_tokens_mean": round(sum(t["prompt_tokens"] for t in threads) / len(threads), 1),
        "thread_cached_tokens_mean": round(sum(t["cached_tokens"] for t in threads) / len(threads), 1),
        "orchestration_overhead_s_per_job": round((par_wall - engine_critical) / len(par), 3),
        "machine": machine(),
    }


def _engine_critical(record) -> float:
    """Seconds the engine spent on the critical path: segments plus the longest thread of each block."""
    nodes = record.dag["nodes"]
    seg = sum(n["ended"] - n["started"] for n in nodes if n["kind"] == "segment")
    threads = [n["ended"] - n["started"] for n in nodes if n["kind"] == "thread"]
    return seg + (max(threads) if threads else 0.0)


def main(argv=None) -> int:
    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--products", type=int, default=5)
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load()
    rng = random.Random(args.seed)
    qs = [question_with(args.products, rng) for _ in range(args.jobs)]
    ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
    try:
        service = JobService(runtime.start(cfg).runner, InProcessJobStore())
        asyncio.run(run_all(service, qs[:1], "parallel"))  # warm-up
        par, par_wall = asyncio.run(run_all(service, qs, "parallel"))
        seq, seq_wall = asyncio.run(run_all(service, qs, "sequential"))
    finally:
        runtime.shutdown_actors(cfg)
        ray.shutdown()
    print(json.dumps(figures(par, seq, par_wall, seq_wall), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
