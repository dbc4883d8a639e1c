"""Placement across workers: ``python -m bench.placement [--workers 2] [--jobs 16] [--concurrency 8]``.

Runs the same forking questions (3 products each, fresh prefix caches before each run) through
Loom with each placement policy and prints, per run: wall time, job latency (mean, p50, p90),
the share of thread prompt tokens the engines recomputed (prompt minus vLLM's cached tokens),
threads placed away from the worker holding most of their prompt (and why), and the cost of one
placement decision, with the machine it ran on. Policies:

- ``cost``: Loom's (orchestrator/routing/placement.py): measured prefill and decode costs, KV index, loads;
- ``prefix``: always the worker holding most of the prompt, then the least loaded (what a
  cache-aware router without a cost model does);
- ``one-worker``: the same jobs on one engine (``--workers 1`` baseline, run separately).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time

from bench.common import machine, run_concurrently
from models import task
from orchestrator.driver.records import JobRequest
from orchestrator.protocol.segment import Placement
from orchestrator.routing.placement import Placer


def forking_questions(n: int, seed: int, products: int = 3) -> list[task.Question]:
    """``n`` questions of ``products`` products each (every one forks that wide)."""
    rng = random.Random(seed)
    return [task.Question(tuple(task.Term(rng.randint(10, 999), rng.randint(2, 9)) for _ in range(products)))
            for _ in range(n)]


class PrefixFirst(Placer):
    """The policy without a cost model: most held tokens, then fewest active requests."""

    def choose(self, ids: list[int]) -> Placement:
        live = self.live()
        held = self.index.matched(ids, live)
        best = max(live, key=lambda w: (held[w], -self.active(w), -self.workers.index(w)))
        return Placement(best, "holds the most of the prompt", {}, held, self.name)


async def run_jobs(service, qs, concurrency: int) -> tuple[list, list[float], float]:
    return await run_concurrently(lambda q: service.run(JobRequest(prompt=q.prompt)), qs, concurrency)


def figures(records, latencies, wall, decisions: list[float]) -> dict:
    """A run's figures; ``decisions``: the seconds of its placement decisions."""
    threads = [n for r in records for n in r.dag["nodes"] if n["kind"] == "thread"]
    prompt = sum(t["prompt_tokens"] for t in threads)
    cached = sum(t["cached_tokens"] for t in threads)
    away = [t for t in threads if t["placement"]["matched_tokens"] < max(t["placement"]["matched"].values())]
    # prompt tokens some worker held (the index said so) that the chosen engine computed again
    held_elsewhere = sum(max(0, max(t["placement"]["matched"].values()) - t["cached_tokens"]) for t in threads)
    q = statistics.quantiles(latencies, n=10)
    return {
        "jobs": len(records), "done": sum(r.status == "done" for r in records), "wall_s": round(wall, 2),
        "latency_mean_s": round(statistics.mean(latencies), 3), "latency_p50_s": round(q[4], 3),
        "latency_p90_s": round(q[8], 3), "threads": len(threads),
        "thread_prompt_tokens": prompt, "thread_prompt_recomputed_share": round(1 - cached / prompt, 3),
        "thread_prompt_recomputed_though_held_share": round(held_elsewhere / prompt, 3),
        "threads_without_their_prefix": len(away),
        "reasons_without_prefix": sorted({t["placement"]["reason"] for t in away}),
        "workers_used": dict(sorted(_count(t["worker"] for t in threads).items())),
        "placement_decision_us_mean": round(1e6 * statistics.mean(decisions), 1),
        "placements": len(decisions),
    }


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def main(argv=None) -> int:
    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--policies", default="cost,prefix")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load(overrides={"num_workers": args.workers, "worker_prefix": "bench-worker"})
    qs = forking_questions(args.jobs, args.seed)
    ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
    out = {"machine": machine(),
           "workers": args.workers, "concurrency": args.concurrency, "runs": {}}
    try:
        for policy in args.policies.split(","):  # the same workers, a placer of the policy's kind
            loom = runtime.start(cfg, PrefixFirst if policy == "prefix" else Placer)
            service = JobService(loom.runner, InProcessJobStore())
            out["profiles"] = {w: vars(p) for w, p in loom.placer.profiles.items()}
            asyncio.run(run_jobs(service, forking_questions(4, args.seed + 1), 4))  # warm-up
            for h in loom.pool.handles.values():
                ray.get(h.reset_prefix_cache.remote())
            time.sleep(0.5)
            loom.placer.decision_s.clear()
            records, latencies, wall = asyncio.run(run_jobs(service, qs, args.concurrency))
            out["runs"][policy] = figures(records, latencies, wall, list(loom.placer.decision_s))
            loom.pool.close()  # the next policy's placer follows the engines on its own
    finally:
        runtime.shutdown_actors(cfg)
        ray.shutdown()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
