"""A bounded load test against a running Loom app (loopback only):
``python -m bench.load --url http://127.0.0.1:8000 --concurrency 32 --minutes 2``.

Keeps ``--concurrency`` jobs in flight for ``--minutes`` (``POST /v1/jobs``, then polls each to
its end), with fresh questions of 1 to 5 terms; stops by itself. Prints what a platform team asks
first: jobs submitted, accepted, lost (accepted but never reaching a final status: must be 0),
done, failed (with the reasons), refused (4xx/5xx at submission), and latency percentiles, with
the machine it ran on. Kill a worker, the coordinator or Redis while it runs to see what users see.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from urllib.parse import urlparse

import httpx

from bench.common import machine
from models import task

FINAL = ("done", "failed", "cancelled")


def loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    if host not in ("localhost", "::1") and not host.startswith("127."):
        raise SystemExit(f"bench.load: {url} is not a loopback address; this test only targets this machine")
    return url


async def one(client: httpx.AsyncClient, q: task.Question, poll_s: float, give_up_s: float) -> dict:
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/jobs", json={"prompt": q.prompt})
    except httpx.HTTPError as e:
        return {"outcome": "refused", "why": type(e).__name__}
    if r.status_code != 202:
        return {"outcome": "refused", "why": f"HTTP {r.status_code}"}
    job_id = r.json()["id"]
    while time.perf_counter() - t0 < give_up_s:
        await asyncio.sleep(poll_s)
        try:
            rec = (await client.get(f"/v1/jobs/{job_id}")).json()
        except (httpx.HTTPError, ValueError):
            continue  # the app restarting: the job is not lost until it never ends
        if rec.get("status") in FINAL:
            right = rec["status"] == "done" and rec["result"].get("answer") == f"A: {q.answer}"
            return {"outcome": rec["status"], "why": rec.get("error", ""), "latency": time.perf_counter() - t0,
                    "right": right}
    return {"outcome": "lost", "why": job_id}


async def run(url: str, concurrency: int, seconds: float, seed: int, give_up_s: float) -> dict:
    rng = random.Random(seed)
    results: list[dict] = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def lane():
            while time.perf_counter() < deadline:
                results.append(await one(client, task.random_question(rng), 0.25, give_up_s))
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    outcomes = Counter(r["outcome"] for r in results)
    latencies = sorted(r["latency"] for r in results if "latency" in r)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "machine": machine(),
        "concurrency": concurrency, "seconds": seconds, "submitted": len(results),
        "accepted": len(results) - outcomes["refused"], "lost": outcomes["lost"], "done": outcomes["done"],
        "failed": outcomes["failed"], "cancelled": outcomes["cancelled"], "refused": outcomes["refused"],
        "right_answers": sum(r.get("right", False) for r in results),
        "why_failed_or_refused": dict(Counter(r["why"] for r in results if r["outcome"] in ("failed", "refused"))),
        "latency_s": {"p50": round(q[49], 3), "p90": round(q[89], 3), "p99": round(q[98], 3),
                      "max": round(latencies[-1], 3) if latencies else 0.0},
        "jobs_per_s": round(len(latencies) / seconds, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--give-up-s", type=float, default=600.0, help="a job not final by then counts as lost")
    args = p.parse_args(argv)
    out = asyncio.run(run(loopback(args.url), args.concurrency, args.minutes * 60, args.seed, args.give_up_s))
    print(json.dumps(out, indent=2))
    return 1 if out["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
