"""Evaluate the model through the full Loom path: ``python -m models.evaluate --n 500``.

Fresh questions (a seed training never used) run as Loom jobs (orchestrator + vLLM
workers, greedy). Each term is a product with probability 3/4 (``--product-p``), so the
questions that fork widest (4 and 5 products) are frequent. Reports exact-match accuracy
overall and by number of products, of terms and by fork depth, the share of right fork
decisions (no block for < 2 products; exactly k threads for k products), token speedup
(total / critical-path tokens) and wall time.
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

from models import task, task_mv
from orchestrator.driver.records import JobRequest
from orchestrator.protocol.fork import ForkPolicy

EVAL_SEED = 20261123  # training draws from seed 1234's stream only


@dataclass
class Outcome:
    expr: str
    correct: bool
    fork_right: bool
    products: int
    terms: int
    depth: int  # the deepest fork in the job's DAG (0: none)
    expected_depth: int  # the deepest fork a right run makes
    threads: int
    total_tokens: int
    critical_path_tokens: int
    seconds: float


def grade(q: task.Question, record, fmt: str = "threadweaver") -> Outcome:
    """A fork decision is right when the job forked exactly the threads, and as deep, as the
    format's trace does (task.expected_threads, task_mv.expected_threads)."""
    nodes = record.dag.get("nodes", [])
    threads = sum(1 for n in nodes if n["kind"] == "thread")
    depth = max((n.get("depth", 0) for n in nodes if n["kind"] == "thread"), default=0)
    want = TASKS[fmt].expected_threads(q)
    fork_right = (threads, depth) == (want.threads, want.depth) and not any("refused" in x for x in record.notes)
    return Outcome(q.expr, record.result.get("answer") == f"A: {q.answer}", fork_right, len(q.products),
                   len(q.terms), depth, want.depth, threads,
                   record.result.get("total_tokens", 0), record.result.get("critical_path_tokens", 0),
                   record.finished - record.started)


TASKS = {"threadweaver": task, "multiverse": task_mv}  # the model's plan format -> its task


async def evaluate(service, questions: list[task.Question], concurrency: int,
                   fmt: str = "threadweaver") -> list[Outcome]:
    sem = asyncio.Semaphore(concurrency)

    async def one(q):
        async with sem:
            # every plan the model writes is run: this grades the model's decisions, not the server's admission
            return grade(q, await service.run(JobRequest(prompt=q.prompt, format=fmt, fork_policy=ForkPolicy.EAGER)),
                         fmt)

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
        "exact_by_products": exact_by(outcomes, "products"),
        "exact_by_terms": exact_by(outcomes, "terms"),
        "exact_by_depth": exact_by(outcomes, "depth"),
        "fork_right_by_depth": share_by(outcomes, "expected_depth", "fork_right"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
    }


def exact_by(outcomes: list[Outcome], field: str) -> dict[str, dict]:
    """``{value: {"n": questions, "exact": share right}}`` for each value of ``field``."""
    return share_by(outcomes, field, "correct", "exact")


def share_by(outcomes: list[Outcome], field: str, flag: str, name: str = "share") -> dict[str, dict]:
    groups: dict[int, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(getattr(o, field), []).append(o)
    return {str(k): {"n": len(g), name: round(sum(getattr(o, flag) for o in g) / len(g), 3)}
            for k, g in sorted(groups.items())}


def token_speedup(outcomes: list[Outcome]) -> float:
    return sum(o.total_tokens for o in outcomes) / max(1, sum(o.critical_path_tokens for o in outcomes))


PRODUCT_P = 0.75


def questions(n: int, seed: int, product_p: float | None = PRODUCT_P, fmt: str = "threadweaver") -> list[task.Question]:
    rng = random.Random(seed)
    if fmt == "multiverse":
        return [task_mv.random_question(rng, product_p=product_p or PRODUCT_P) for _ in range(n)]
    return [task.random_question(rng, product_p=product_p) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    import os

    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--product-p", type=float, default=PRODUCT_P,
                   help="each term is a product with this probability (0: products uniform in 0..terms)")
    p.add_argument("--config", default=None)
    p.add_argument("--out", default=None, help="write per-question outcomes (JSONL)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load(args.config)
    ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
    try:
        runner = runtime.start(cfg).runner
        service, fmt = JobService(runner, InProcessJobStore()), runner.default_format  # the model's own
        t0 = time.time()
        qs = questions(args.n, args.seed, args.product_p or None, fmt)
        outcomes = asyncio.run(evaluate(service, qs, args.concurrency, fmt))
        summary = {"format": fmt, "model": cfg.model, **summarize(outcomes, time.time() - t0)}
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
