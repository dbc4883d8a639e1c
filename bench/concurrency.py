"""Loom's jobs at a given concurrency, and what they cost the coordinator:
``python -m bench.concurrency --concurrency 1,8,32 --jobs 32 [--stream-interval-ms 0,20]``.

Runs the same questions (``--products`` products each) through the job service (in-process
store, the configured workers) at each concurrency and stream interval, and prints per run:
mean/p50/p90 job latency, throughput, total tokens, and the token-budget round trips the
engine client made to the coordinator (count, per second, mean/p90 latency as the driver
saw it), with the machine it ran on. Long: about a minute per run on 2 cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time

from bench.common import latency_figures, machine, p90
from bench.parallel_vs_sequential import question_with
from bench.placement import run_jobs


class TimedBudget:
    """The driver's budget, timing each lease and settle (answered from the driver's copy of the
    job's account; sent on to the coordinator without waiting)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[float] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def _timed(self, call):
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self.calls.append(time.perf_counter() - t0)

    async def lease(self, *args):
        return await self._timed(self.inner.lease(*args))

    async def settle(self, *args):
        return await self._timed(self.inner.settle(*args))


async def run(service, budget: TimedBudget, questions: list, concurrency: int) -> dict:
    await run_jobs(service, questions[:1], 1)  # warm-up
    budget.calls.clear()
    records, latencies, wall = await run_jobs(service, questions, concurrency)
    calls = budget.calls
    return {"concurrency": concurrency, "jobs": len(records), "done": sum(r.status == "done" for r in records),
            **latency_figures(latencies), "jobs_per_s": round(len(records) / wall, 3),
            "tokens": sum(r.result["total_tokens"] for r in records if r.result),
            "budget_calls": len(calls), "budget_calls_per_s": round(len(calls) / wall, 1),
            "budget_call_ms_mean": round(1000 * statistics.mean(calls), 2) if calls else 0.0,
            "budget_call_ms_p90": round(1000 * p90(calls), 2) if calls else 0.0}


def main(argv=None) -> int:
    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.budget.replica import ReplicatedBudget
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--jobs", type=int, default=32)
    p.add_argument("--products", type=int, default=5)
    p.add_argument("--stream-interval-ms", default="20")
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rng = random.Random(args.seed)
    questions = [question_with(args.products, rng) for _ in range(args.jobs)]
    ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
    try:
        for interval in [float(x) for x in args.stream_interval_ms.split(",")]:
            cfg = load(overrides={"engine": {"stream_interval_ms": interval}})
            budget = TimedBudget(ReplicatedBudget(runtime.start_coordinator(cfg)))
            loom = runtime.start(cfg, budget=budget)
            service = JobService(loom.runner, InProcessJobStore())
            try:
                for c in [int(x) for x in args.concurrency.split(",")]:
                    figures = asyncio.run(run(service, budget, questions, c))
                    print(json.dumps({"stream_interval_ms": interval, "workers": cfg.num_workers, **figures,
                                      "machine": machine()}), flush=True)
            finally:
                loom.pool.close()  # the next interval's engines are new ones
                runtime.shutdown_actors(cfg)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
