"""The step profile of the real engine as Loom runs it, for the simulated engine
(workers/sim/profile.py): a step's seconds by batch size and per prefilled token.

    python -m bench.sim_profile [--questions 24] [--concurrency 1,4,8,16,32] [--out workers/sim/profiles/cpu-loom-arith.json]
                                [--measured steps.json | --refit steps.json]

`loom serve` (the shipped config, one worker, its processes and engine pinned as it pins them)
answers bench.peers' workloads (mix and five) at each concurrency; then its worker hands over
the engine's last steps as vLLM timed them (its iteration stats: requests decoded, prompt
tokens prefilled, seconds since those requests' previous token, time to first token). So the
profile holds what Loom's own processes cost the engine on this machine, which a profile of the
engine alone does not (on 2026-12-05 such a profile made the simulated jobs 0.52-0.84x as long
as the real ones). The fit:
- decode: steps that prefilled nothing, grouped by batch size into BUCKETS; per group with at
  least MIN_STEPS steps, the median batch size and the mean seconds (a job waits for the sum of
  its steps: a median missed the slow tail), never less than the group's below (single batch
  sizes are too noisy: 63 and 64 gave a falling step, which the profile then extended past 64);
- prefill: over steps that decoded and prefilled, least squares of (seconds - decode at that
  batch) against tokens prefilled: a fixed cost per prefilling step and seconds per token;
- arrival: the median over steps that only prefilled of (time to first token - the step);
- host busy share: the CPU seconds vLLM's engine-core process spent during the load over the
  seconds its steps took (the engine busy): what workers/sim/host_load.py spins beside a
  simulated engine;
- the worker process's CPU per step and per token (its engine's front end, AsyncLLM, runs in
  it): least squares over the loads (each workload at each concurrency) of its CPU seconds
  against the engine's steps and tokens made: what workers/sim/front_end.py makes a simulated
  worker spend.
Prints the profile (and the machine) and writes it.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import httpx

from bench.common import cpu_seconds, cpu_since, free_port, machine, run_concurrently, stop_process
from bench.loom_server import start_loom, wait_healthy
from bench.peers import ask_loom, workload
from orchestrator.protocol.engine import StepSample
from workers.sim.profile import PROFILES, StepProfile

MIN_STEPS = 20
ENGINE_CORE = "VLLM::EngineCore"  # the engine-core process's title
WORKER = "ray::WorkerActor"  # the worker actor's (its engine's front end runs in it)
CONCURRENCY = "1,4,8,16,32"  # the loads the engine answers while its steps are kept
BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # upper bounds of batch size groups


async def drive(url: str, questions: list, concurrency: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await run_concurrently(functools.partial(ask_loom, client), questions, concurrency)


@dataclass(frozen=True)
class WorkerSpend:
    """What `loom serve`'s worker process spent over one load: its CPU, the engine's steps, the tokens made."""

    cpu_s: float
    steps: int
    tokens: int


def worker_counts() -> tuple[int, int]:
    """Steps the worker's engine has timed and tokens it has made so far (in `loom serve`'s Ray cluster)."""
    import ray

    worker = ray.get_actor("loom-worker-0")
    return len(ray.get(worker.step_samples.remote())), ray.get(worker.counters.remote())["generated_tokens"]


def fit_worker_cpu(spends: list[WorkerSpend]) -> tuple[float, float]:
    """Least squares, no intercept: the worker process's CPU = per step x steps + per token x tokens."""
    ss = sum(w.steps ** 2 for w in spends)
    tt = sum(w.tokens ** 2 for w in spends)
    st = sum(w.steps * w.tokens for w in spends)
    sc = sum(w.steps * w.cpu_s for w in spends)
    tc = sum(w.tokens * w.cpu_s for w in spends)
    det = ss * tt - st * st
    if not det:
        return 0.0, 0.0
    per_step, per_token = (sc * tt - tc * st) / det, (tc * ss - sc * st) / det
    if per_step < 0:  # the fit says steps cost nothing: tokens alone
        return 0.0, sum(w.cpu_s for w in spends) / max(sum(w.tokens for w in spends), 1)
    return per_step, max(per_token, 0.0)


def fit_decode(steps: list[StepSample]) -> tuple[dict[int, float], int]:
    """Decode-only steps grouped by batch size: per group of MIN_STEPS or more, the median batch
    and the mean seconds (a job waits for the sum of its steps), never below the group's below."""
    by_bucket = defaultdict(list)
    for s in steps:
        if s.decoding and not s.prefilled:
            by_bucket[next((b for b in BUCKETS if s.decoding <= b), BUCKETS[-1])].append(s)
    decode, floor = {}, 0.0
    for _, group in sorted(by_bucket.items()):
        if len(group) >= MIN_STEPS:
            floor = max(floor, statistics.mean(s.seconds for s in group))
            decode[round(statistics.median(s.decoding for s in group))] = round(floor, 6)
    return decode, sum(len(v) for v in by_bucket.values())


def fit_prefill(steps: list[StepSample], base: StepProfile) -> tuple[float, float, int]:
    """Steps that decoded and prefilled: least squares of their seconds beyond the decode at their
    batch against the tokens prefilled; (the fixed cost, seconds per token, steps), both >= 0."""
    pts = [(s.prefilled, s.seconds - base.decode_step_s(s.decoding)) for s in steps if s.decoding and s.prefilled]
    if len(pts) < 2:
        return 0.0, 0.0, len(pts)
    mx, my = statistics.mean(x for x, _ in pts), statistics.mean(y for _, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = max(0.0, sum((x - mx) * (y - my) for x, y in pts) / sxx) if sxx else 0.0
    return max(0.0, my - slope * mx), slope, len(pts)


def fit(steps: list[StepSample], max_batched_tokens: int, source: str, core_cpu_s: float,
        spends: list[WorkerSpend]) -> StepProfile:
    decode, n_decode = fit_decode(steps)
    base = StepProfile("fit", "", 0.0, decode)
    fixed, per_token, n_mixed = fit_prefill(steps, base)
    base = StepProfile("fit", "", per_token, decode, prefill_step_s=fixed)
    only = [s.first_token_s - base.step_s(0, s.prefilled) for s in steps if not s.decoding and s.prefilled and s.first_token_s]
    arrival = max(0.0, statistics.median(only)) if only else 0.0
    busy_s = sum(s.seconds for s in steps if s.decoding)
    cpu_per_step, cpu_per_token = fit_worker_cpu(spends)
    return StepProfile(
        name="cpu-loom-arith", source=source, prefill_s_per_token=round(per_token, 8), decode_s=decode,
        prefill_step_s=round(fixed, 6), max_batched_tokens=max_batched_tokens, arrival_s=round(arrival, 6),
        host_busy_share=round(min(1.0, core_cpu_s / busy_s), 3) if busy_s else 0.0,
        worker_cpu_s_per_step=round(cpu_per_step, 7), worker_cpu_s_per_token=round(cpu_per_token, 7),
        notes=[(f"{len(steps)} steps: {n_decode} decode only, {n_mixed} decode and prefill, {len(only)} prefill only; "
                f"groups of batch sizes (up to {', '.join(map(str, BUCKETS))}) with fewer than {MIN_STEPS} "
                "decode-only steps left out"),
               f"engine core CPU {core_cpu_s:.2f} s over {busy_s:.2f} s of steps",
               "worker process CPU s / steps / tokens per load: " + "; ".join(
                   f"{w.cpu_s:.2f} / {w.steps} / {w.tokens}" for w in spends)])


def load(pid: int, url: str, concurrency: str, questions: int, seed: int) -> tuple[float, list[WorkerSpend], list[StepSample]]:
    """bench.peers' workloads at each concurrency: the engine core's CPU over all of it, the worker
    process's spend per load, and the engine's steps."""
    import ray

    ray.init(address="auto", namespace="loom", log_to_driver=False)
    try:
        before, spends = cpu_seconds(pid), []
        for c in (int(x) for x in concurrency.split(",")):
            for name in ("mix", "five"):
                cpu, (steps, tokens) = cpu_seconds(pid), worker_counts()
                asyncio.run(drive(url, workload(name, questions, seed + c), c))
                steps_after, tokens_after = worker_counts()
                spends.append(WorkerSpend(cpu_since(pid, cpu).get(WORKER, 0.0), steps_after - steps,
                                          tokens_after - tokens))
        core_cpu_s = cpu_since(pid, before).get(ENGINE_CORE, 0.0)
        return core_cpu_s, spends, ray.get(ray.get_actor("loom-worker-0").step_samples.remote())
    finally:
        ray.shutdown()


def measure(args) -> dict:
    """`loom serve` under load: its engine's steps, the engine core's CPU, the worker's spends, and the source."""
    work, port = Path(tempfile.mkdtemp(prefix="loom-sim-profile-")), free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_loom(port, None, work / "loom.log", workers=1)
    try:
        wait_healthy(url, server)
        core_cpu_s, spends, steps = load(server.pid, url, args.concurrency, args.questions, args.seed)
    finally:
        stop_process(server, timeout=120)
    import torch
    import vllm

    source = (f"measured by bench.sim_profile on {date.today()}: {machine()}; vllm {vllm.__version__}, "
              f"torch {torch.__version__}; model loom-arith (float32) in `loom serve`, one worker, its steps "
              f"as vLLM timed them under bench.peers' workloads at concurrency {args.concurrency}")
    return {"source": source, "core_cpu_s": core_cpu_s, "spends": [asdict(w) for w in spends],
            "steps": [asdict(s) for s in steps]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--concurrency", default=CONCURRENCY)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=str(PROFILES / "cpu-loom-arith.json"))
    parser.add_argument("--measured", default="", help="also keep what was measured here (JSON), to fit again")
    parser.add_argument("--refit", default="", help="fit what an earlier --measured kept instead of measuring")
    args = parser.parse_args()
    measured = json.loads(Path(args.refit).read_text()) if args.refit else measure(args)
    if args.measured:
        Path(args.measured).write_text(json.dumps(measured))
    prof = fit([StepSample(**s) for s in measured["steps"]], 2048, measured["source"], measured["core_cpu_s"],
               [WorkerSpend(**w) for w in measured["spends"]])
    print(json.dumps({"machine": machine(), **prof.to_dict()}, indent=1))
    Path(args.out).write_text(json.dumps(prof.to_dict(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
