"""KV transfer between workers: ``python -m bench.kv_transfer [--part link,engines,jobs]``.

- ``link``: the line rate. Two processes, one gloo pair group built as Loom's transport builds it
  (workers/kv/pair_group.py), a plain ``send``/``recv`` of the bytes N KV blocks of the shipped
  model take; median of repeats (bench.kv_pair's bare link, with the shipped model's KV shape).
- ``engines``: the connector. Two real engines (Loom's worker actors); for N blocks, a random
  prompt of N whole blocks is run on worker 0, pinned there (``hold``), and pulled by worker 1's
  request; the pull's own report gives bytes and milliseconds (Pull request, gather, send/recv,
  scatter). Caches are reset between repeats.
- ``jobs``: the end-to-end effect. The same forking questions (3 products) through Loom with 2
  workers, KV transfer on (the cost model may pull) and off (it may only keep or recompute), at
  several concurrencies: job latency, thread prompt tokens recomputed, threads that pulled.

Prints JSON with the machine it ran on. The transport alone, a holder and a puller process with
torch only (CPU or one GPU, faults included), is ``python -m bench.kv_pair``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import time

from bench.common import machine
from bench.kv_pair import Shape, bare_link

BLOCK_COUNTS = (1, 2, 4, 8, 16, 31)
SHIPPED_KV = Shape(layers=4, block=32, heads=6, head=32, dtype="float32")  # models/loom-arith's KV, block 32


async def engines(loom, reps: int) -> list[dict]:
    from orchestrator.protocol.generation import GenRequest
    from orchestrator.protocol.kv import PULLED_KEY

    w0, w1 = loom.pool.handles.values()
    rng = random.Random(5)
    rows = []
    for n in BLOCK_COUNTS:
        ms, nbytes = [], 0
        for k in range(reps):
            for h in (w0, w1):
                await h.reset_prefix_cache.remote()
            ids = [rng.randrange(10, 100) for _ in range(n * 32 + 1)]
            await _last(w0, GenRequest(f"bench-warm-{n}-{k}", ids, 1))
            hold = await w0.hold.remote(f"bench-hold-{n}-{k}", ids, n * 32)
            last = await _last(w1, GenRequest(f"bench-pull-{n}-{k}", ids, 1, kv_params=hold.to_params()))
            report = last.kv_params[PULLED_KEY]
            assert report["ok"] and last.cached_tokens == n * 32, report
            ms.append(report["ms"])
            nbytes = report["bytes"]
        m = statistics.median(ms)
        rows.append({"blocks": n, "bytes": nbytes, "ms": round(m, 3), "gb_per_s": round(nbytes / m / 1e6, 3)})
    return rows


async def _last(handle, req):
    """The request's last chunk, streamed as the engine client streams it."""
    from orchestrator.routing.stream_client import StreamClient

    stream = StreamClient((await handle.ready.remote()).stream)
    try:
        return [c async for c in stream.generate(req)][-1]
    finally:
        stream.close()


def jobs(loom, service, n: int, concurrencies: list[int], seed: int, repeat: int = 1) -> dict:
    import ray

    from bench.placement import figures, forking_questions, run_jobs

    placer, link = loom.placer, loom.placer.link
    out = {}
    for conc in concurrencies:
        for rep, mode in [(r, m) for r in range(repeat) for m in ("on", "off")]:  # alternating
            placer.set_link(link if mode == "on" else None)
            for h in loom.pool.handles.values():
                ray.get(h.reset_prefix_cache.remote())
            time.sleep(0.5)
            placer.decision_s.clear()
            records, latencies, wall = asyncio.run(run_jobs(service, forking_questions(n, seed), conc))
            threads = [t for r in records for t in r.dag["nodes"] if t["kind"] == "thread"]
            fig = figures(records, latencies, wall, list(placer.decision_s))
            fig["threads_pulled"] = sum((t["placement"]["prefix"] or {}).get("source") == "pulled" for t in threads)
            fig["kv_bytes_moved"] = sum((t["placement"]["prefix"] or {}).get("bytes", 0) for t in threads)
            out[f"concurrency {conc}, transfer {mode}" + (f", run {rep + 1}" if repeat > 1 else "")] = fig
    placer.set_link(link)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="link,engines,jobs")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--jobs", type=int, default=32)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--repeat", type=int, default=1, help="runs of each (concurrency, on/off), alternating")
    args = p.parse_args(argv)
    parts = args.part.split(",")
    out: dict = {"machine": machine()}
    if "link" in parts:
        out["link_gloo_plain"] = bare_link(mp.get_context("spawn"), SHIPPED_KV, "cpu", list(BLOCK_COUNTS), args.reps,
                                           timeout_s=60.0)
    if "engines" in parts or "jobs" in parts:
        out.update(_with_engines(parts, args))
    print(json.dumps(out, indent=2))
    return 0


def _with_engines(parts: list[str], args) -> dict:
    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load(overrides={"num_workers": 2, "worker_prefix": "bench-kv", "kv_transfer": "on"})
    ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
    out: dict = {}
    try:
        loom = runtime.start(cfg)
        if "engines" in parts:
            out["connector_pull"] = asyncio.run(engines(loom, args.reps))
        if "jobs" in parts:
            service = JobService(loom.runner, InProcessJobStore())
            concs = [int(c) for c in args.concurrency.split(",")]
            out["jobs"] = jobs(loom, service, args.jobs, concs, args.seed, args.repeat)
            out["link_model_learned_gb_per_s"] = round(loom.placer.link.bytes_per_s / 1e9, 3)
    finally:
        runtime.shutdown_actors(cfg)
        ray.shutdown()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
