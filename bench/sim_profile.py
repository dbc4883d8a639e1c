"""The step profile of the real engine as Loom runs it, for the simulated engine
(workers/sim/profile.py): a step's seconds by batch size and per prefilled token.

    python -m bench.sim_profile [--questions 24] [--concurrency 1,4,8,16,32] [--out workers/sim/profiles/cpu-loom-arith.json]

`loom serve` (the shipped config, one worker, its processes and engine pinned as it pins them)
answers bench.peers' workloads (mix and five) at each concurrency; then its worker hands over
the engine's last steps as vLLM timed them (its iteration stats: requests decoded, prompt
tokens prefilled, seconds since those requests' previous token, time to first token). So the
profile holds what Loom's own processes cost the engine on this machine, which a profile of the
engine alone does not (on 2026-12-05 such a profile made the simulated jobs 0.52-0.84x as long
as the real ones). The fit:
- decode: steps that prefilled nothing, grouped by batch size into BUCKETS; per group with at
  least MIN_STEPS steps, the median batch size and the median seconds, never less than the
  group's below (single batch sizes are too noisy: 63 and 64 gave a falling step, which the
  profile then extended past 64);
- prefill: the median over steps that decoded and prefilled of (seconds - decode at that batch)
  / tokens prefilled;
- arrival: the median over steps that only prefilled of (time to first token - the step);
- host busy share: the CPU seconds vLLM's engine-core process spent during the load over the
  seconds its steps took (the engine busy): what workers/sim/host_load.py spins beside a
  simulated engine.
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
BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # upper bounds of batch size groups


async def drive(url: str, questions: list, concurrency: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await run_concurrently(functools.partial(ask_loom, client), questions, concurrency)


def engine_steps() -> list[StepSample]:
    """The steps of the engine of `loom serve`'s worker (joining its Ray cluster)."""
    import ray

    ray.init(address="auto", namespace="loom", log_to_driver=False)
    try:
        return ray.get(ray.get_actor("loom-worker-0").step_samples.remote())
    finally:
        ray.shutdown()


def fit(steps: list[StepSample], max_batched_tokens: int, source: str, core_cpu_s: float) -> StepProfile:
    by_bucket = defaultdict(list)
    for s in steps:
        if s.decoding and not s.prefilled:
            by_bucket[next((b for b in BUCKETS if s.decoding <= b), BUCKETS[-1])].append(s)
    decode, floor = {}, 0.0
    for _, group in sorted(by_bucket.items()):
        if len(group) >= MIN_STEPS:
            floor = max(floor, statistics.median(s.seconds for s in group))
            decode[round(statistics.median(s.decoding for s in group))] = round(floor, 6)
    base = StepProfile("fit", "", 0.0, decode)
    mixed = [(s.seconds - base.decode_step_s(s.decoding)) / s.prefilled for s in steps if s.decoding and s.prefilled]
    per_token = max(0.0, statistics.median(mixed)) if mixed else 0.0
    only = [s.first_token_s - base.step_s(0, s.prefilled) - s.prefilled * per_token
            for s in steps if not s.decoding and s.prefilled and s.first_token_s]
    arrival = max(0.0, statistics.median(only)) if only else 0.0
    busy_s = sum(s.seconds for s in steps if s.decoding)
    return StepProfile(
        name="cpu-loom-arith", source=source, prefill_s_per_token=round(per_token, 8), decode_s=decode,
        max_batched_tokens=max_batched_tokens, arrival_s=round(arrival, 6),
        host_busy_share=round(min(1.0, core_cpu_s / busy_s), 3) if busy_s else 0.0,
        notes=[(f"{len(steps)} steps: {sum(len(v) for v in by_bucket.values())} decode only, {len(mixed)} decode "
               f"and prefill, {len(only)} prefill only; groups of batch sizes (up to {', '.join(map(str, BUCKETS))}) "
               f"with fewer than {MIN_STEPS} decode-only steps left out"),
               f"engine core CPU {core_cpu_s:.2f} s over {busy_s:.2f} s of steps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--concurrency", default="1,4,8,16,32")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=str(PROFILES / "cpu-loom-arith.json"))
    args = parser.parse_args()
    work, port = Path(tempfile.mkdtemp(prefix="loom-sim-profile-")), free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_loom(port, None, work / "loom.log", workers=1)
    try:
        wait_healthy(url, server)
        before = cpu_seconds(server.pid)
        for c in (int(x) for x in args.concurrency.split(",")):
            for name in ("mix", "five"):
                asyncio.run(drive(url, workload(name, args.questions, args.seed + c), c))
        core_cpu_s = cpu_since(server.pid, before).get(ENGINE_CORE, 0.0)
        steps = engine_steps()
    finally:
        stop_process(server, timeout=120)
    import torch
    import vllm

    source = (f"measured by bench.sim_profile on {date.today()}: {machine()}; vllm {vllm.__version__}, "
              f"torch {torch.__version__}; model loom-arith (float32) in `loom serve`, one worker, its steps "
              f"as vLLM timed them under bench.peers' workloads at concurrency {args.concurrency}")
    prof = fit(steps, 2048, source, core_cpu_s)
    print(json.dumps({"machine": machine(), **prof.to_dict()}, indent=1))
    Path(args.out).write_text(json.dumps(prof.to_dict(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
