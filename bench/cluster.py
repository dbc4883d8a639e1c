"""A cluster of simulated engines (SIMULATED figures): Loom (``loom``: its adaptive fork policy;
``loom-eager`` and ``loom-never``: the same server, each job asking to fork eagerly or never)
against a client-side fork/join orchestrator behind a round-robin balancer and behind a
cache-aware router, on the same engines, the same jobs, at open-loop arrival rates from light load
past saturation. Loom's jobs carry their latency target (below) as ``loom.latency_target_s``.

    python -m bench.cluster [--workers 16] [--profile h100-qwen3-8b] [--rates 0.5,1,2,4] [--jobs 40]

`loom serve` starts N simulated workers (engine_backend: sim, the profile's step times, its
clock slowed ``--time-scale`` times so that this machine steps them all; every figure here is
in simulated seconds, real ones divided by the scale), whose model writes synthetic
ThreadWeaver-like documents (bench.sim_documents: 2-8 threads of a few hundred to a few thousand
tokens). Loom answers over its HTTP API; the clients (bench.cluster_client) reach the same
workers over their request streams, routed by bench.cluster_routers. Before each run every
engine's prefix cache is cleared. Systems take turns at each rate (their order rotates by round).

Per (system, workers, rate), one JSON line: ``goodput`` (the arrival rate times the share of
jobs finishing within their target, in jobs per simulated second; the target: ``--tpot-ms`` per
token on the job's critical path, as if each of the tokens it must write one after another came
that fast), ``good_share``, ``jobs_per_s`` (over the run's span), ``p50_s``, ``p99_s``,
``recomputed_prefix_share`` (of all prompt tokens sent to engines, those some engine held when
the request was placed, by the engines' own KV events, that its engine computed again),
``coordinator_calls_per_s`` (Loom's budget calls per simulated second; 0 for the clients),
``placement_ms_p99`` (real milliseconds to choose an engine; ``placement_cpu_ms_p99``: the CPU
that took, without waiting for a core on this crowded machine), ``coordinator_cores`` and
``ingress_cores`` (the cores Loom's coordinator and its ingress replicas, which run the jobs'
drivers and placement, kept busy, scaled to the simulated clock), ``itl_ms`` (mean simulated
milliseconds per token after the first: above the profile's largest step, the machine did not
keep up and the run says so in ``kept_up``). ``--kill K`` kills K of Loom's workers in the middle
of its runs (Ray restarts them): ``lost`` counts the jobs that did not come back done,
``reruns`` the engine requests placed again after their worker died.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from pathlib import Path

import yaml

from bench import cluster_runs as runs
from bench.common import free_port, machine, stop_process
from bench.loom_server import ROOT, start_loom, wait_healthy
from bench.sim_documents import Document, document
from cluster import config, runtime
from workers.sim import profile as profiles


def server_config(work: Path, workers: int, prof: str, documents: Path, scale: float) -> Path:
    cfg = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    cfg.update({"num_workers": workers, "max_threads_in_flight": workers * runs.MAX_NUM_SEQS})
    cfg["engine"] = {**cfg.get("engine", {}), "engine_backend": "sim", "sim_profile": prof,
                     "sim_documents": str(documents), "sim_time_scale": scale, "max_model_len": runs.MAX_MODEL_LEN,
                     "block_size": runs.BLOCK_SIZE, "max_num_seqs": runs.MAX_NUM_SEQS}
    cfg["budget"] = {"max_total_tokens": runs.MAX_MODEL_LEN, "max_width": 8, "max_depth": 6,
                     "max_thread_tokens": runs.MAX_MODEL_LEN, "deadline_s": 3600}
    path = work / f"cluster-{workers}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def synthetic(n: int, seed: int) -> list[Document]:
    rng = random.Random(seed)
    return [document(rng, f"{seed}-{i}") for i in range(n)]


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="16", help="comma-separated worker counts")
    p.add_argument("--profile", default="h100-qwen3-8b")
    p.add_argument("--rates", default="0.5,1,2,4", help="arrivals per simulated second")
    p.add_argument("--jobs", type=int, default=40, help="jobs per run")
    p.add_argument("--systems", default=",".join(runs.SYSTEMS))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--time-scale", type=float, default=0.0, help="real seconds per simulated one (0: workers / 2)")
    p.add_argument("--tpot-ms", type=float, default=20.0, help="the latency target per critical-path token")
    p.add_argument("--kill", type=int, default=0, help="Loom's workers to kill mid-run")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default="", help="also append the rows here (JSON lines)")
    p.add_argument("--jobs-out", default="", help="also append each job's latency and target here (JSON lines)")
    p.add_argument("--plot", default="", help="also plot the rows here (PNG: bench/cluster_plot.py)")
    args = p.parse_args(argv)
    unknown = set(args.systems.split(",")) - set(runs.SYSTEMS)
    if unknown:
        p.error(f"unknown system(s): {', '.join(sorted(unknown))} ({', '.join(runs.SYSTEMS)})")
    try:
        profiles.load(args.profile)
    except profiles.ProfileError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    prof = profiles.load(args.profile)
    print(json.dumps({"machine": machine(), "profile": prof.name, "simulated": True}), flush=True)
    work = Path(tempfile.mkdtemp(prefix="loom-bench-cluster-"))
    docs = synthetic(args.jobs, args.seed)
    tok = runtime.load_tokenizer(config.load(ROOT / "cluster" / "serve_config.yaml"))  # the model the engines write with
    prompts = runs.render(docs, work / "documents.jsonl", tok)
    rows = []
    for n in (int(x) for x in args.workers.split(",")):
        scale = args.time_scale or max(1.0, n / 2)
        port, path = free_port(), server_config(work, n, args.profile, work / "documents.jsonl", scale)
        server = start_loom(port, None, work / f"loom-{n}.log", workers=n, config=path)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", server, timeout=1800)
            setting = runs.Setting(f"http://127.0.0.1:{port}", n, scale, args.tpot_ms / 1000, args.kill,
                                   prof.decode_step_s(runs.MAX_NUM_SEQS), server.pid, args.jobs_out)
            names = runtime.worker_names(config.load(path))
            rows += asyncio.run(runs.all_runs(setting, names, tok, docs, prompts, [float(r) for r in args.rates.split(",")],
                                              args.systems.split(","), args.rounds, args.seed))
        finally:
            stop_process(server, timeout=300)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps({**r, "machine": machine(), "profile": prof.name}) + "\n" for r in rows)
    if args.plot:
        from bench.cluster_plot import plot

        plot(rows, f"{machine()}; profile {prof.name}", Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
