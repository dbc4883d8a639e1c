"""Evaluate the model through the full Loom path: ``python -m models.evaluate --n 500``.

Fresh questions (a seed training never used) run as Loom jobs (orchestrator + vLLM
workers, greedy). Reports exact-match accuracy, the share of right fork decisions (no
block for < 2 products; exactly k threads for k products), token speedup (total /
critical-path tokens) and wall time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass

from models import task
from orchestrator.records import JobRequest

EVAL_SEED = 20261123  # training draws from seed 1234's stream only


@dataclass
class Outcome:
    expr: str
    correct: bool
    fork_right: bool
    products: int
    threads: int
    total_tokens: int
    critical_path_tokens: int
    seconds: float


def grade(q: task.Question, record) -> Outcome:
    nodes = record.dag.get("nodes", [])
    threads = sum(1 for n in nodes if n["kind"] == "thread")
    k = len(q.products)
    fork_right = threads == (k if k >= 2 else 0) and not any("refused" in x for x in record.notes)
    return Outcome(q.expr, record.result.get("answer") == f"A: {q.answer}", fork_right, k, threads,
                   record.result.get("total_tokens", 0), record.result.get("critical_path_tokens", 0),
                   record.finished - record.started)


async def evaluate(service, questions: list[task.Question], concurrency: int) -> list[Outcome]:
    sem = asyncio.Semaphore(concurrency)

    async def one(q):
        async with sem:
            return grade(q, await service.run(JobRequest(prompt=q.prompt)))

    return await asyncio.gather(*(one(q) for q in questions))


def summarize(outcomes: list[Outcome], wall: float) -> dict:
    n = len(outcomes)
    forked = [o for o in outcomes if o.threads]
    return {
        "questions": n,
        "exact_match": sum(o.correct for o in outcomes) / n,
        "fork_decision_right": sum(o.fork_right for o in outcomes) / n,
        "token_speedup_all": token_speedup(outcomes),
        "token_speedup_forked": token_speedup(forked),
        "forked_questions": len(forked),
        "wall_seconds": round(wall, 1),
        "mean_job_seconds": round(sum(o.seconds for o in outcomes) / n, 3),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
    }


def token_speedup(outcomes: list[Outcome]) -> float:
    return sum(o.total_tokens for o in outcomes) / max(1, sum(o.critical_path_tokens for o in outcomes))


def questions(n: int, seed: int) -> list[task.Question]:
    rng = random.Random(seed)
    return [task.random_question(rng) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    import os

    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.service import JobService
    from orchestrator.store import InProcessJobStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--config", default=None)
    p.add_argument("--out", default=None, help="write per-question outcomes (JSONL)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load(args.config)
    ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
    try:
        service = JobService(runtime.make_runner(cfg), InProcessJobStore())
        t0 = time.time()
        outcomes = asyncio.run(evaluate(service, questions(args.n, args.seed), args.concurrency))
        summary = summarize(outcomes, time.time() - t0)
    finally:
        runtime.shutdown_actors(cfg)
        ray.shutdown()
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(asdict(o)) + "\n" for o in outcomes)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
