"""Trace export under load: 500 jobs at concurrency 32 through `loom serve`, export off, to a
counting sink and into a real Phoenix, all up at once and taking turns in rounds; then the
trace server killed part-way through a run.

    python -m bench.trace_load [--jobs 500] [--concurrency 32] [--rounds 2] [--no-phoenix]

Four servers, one engine each, up at once: export off, twice (two servers: the spread of export
off is that of runs and of servers, which differ by where their processes land on the cores);
export to an OTLP sink that only counts (bench/otlp_sink.py: the cost of exporting in Loom's
processes); export to Phoenix (which, on one machine, also pays the trace server ingesting on the
same cores). Prints one JSON line per run: system, server, round, jobs done, jobs/s, mean latency,
the server's CPU milliseconds per job by process (its whole process tree, during the run);
for the sink the spans it received; for Phoenix in round 0 the traces checked in the backend: jobs
with a complete trace (a root, and a client and a worker span for every engine request of the
record) and spans whose parent is missing. Then a summary line: each system's jobs/s range, and
whether every export-on run lies within export off's range. Then Phoenix killed once a fifth of a
run's jobs have answered. The machine line comes first.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import cpu_seconds, cpu_since, free_port, machine, ms_per_job, run_concurrently, stop_process
from bench.loom_server import start_loom, wait_healthy
from bench.trace_server import PhoenixServer

QUESTIONS = [f"Q: {a}*{b}+{c}*{d}+{e}*9" for a, b, c, d, e in
             ((23, 4, 56, 7, 8), (12, 3, 45, 6, 7), (71, 5, 6, 8, 9), (34, 7, 8, 9, 5), (90, 9, 14, 3, 2))]


async def run_jobs(url: str, n: int, concurrency: int, on_done=None) -> tuple[list[str], list[float], float]:
    """n chat completions, ``concurrency`` at a time: the ids of the jobs that answered 200, each
    request's seconds and the wall time. ``on_done(count)`` after each answer."""
    done = 0

    async def ask(i: int) -> str | None:
        nonlocal done
        body = {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)][3:]}], "seed": i}
        r = await client.post("/v1/chat/completions", json=body)
        done += 1
        if on_done is not None:
            on_done(done)
        return r.json()["loom"]["job_id"] if r.status_code == 200 else None

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        jobs, latencies, wall = await run_concurrently(ask, range(n), concurrency)
    return [j for j in jobs if j is not None], latencies, wall


def check_traces(phoenix: PhoenixServer, project: str, url: str, jobs: list[str]) -> dict:
    """Per job, is its trace complete in the backend; and spans with a missing parent."""
    spans = settled(lambda: phoenix.spans(project), every_s=5, size=len)
    by_trace: dict[str, list[dict]] = {}
    for s in spans:
        by_trace.setdefault(s["context"]["trace_id"], []).append(s)
    ids = {s["context"]["span_id"] for s in spans}
    orphans = sum(1 for s in spans if s["parent_id"] is not None and s["parent_id"] not in ids)
    roots = {s["attributes"].get("loom.job.id"): s["context"]["trace_id"] for s in spans if s["name"] == "loom.job"}
    complete = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for job in jobs:
            rec = client.get(f"/v1/jobs/{job}").json()
            placed = sum(1 for n in rec["dag"]["nodes"] if n["placement"])
            names = Counter(s["name"] for s in by_trace.get(roots.get(job, ""), []))
            complete += names["loom.engine.generate"] == placed and \
                sum(c for name, c in names.items() if name.startswith("chat ")) == placed
    return {"spans_in_backend": len(spans), "traces_complete": complete, "orphan_spans": orphans}


def report(server: str, round_: int, jobs: list[str], latencies: list[float], wall: float, n: int,
           **extra) -> dict:
    line = {"system": system_of(server), "server": server, "round": round_, "jobs": n, "done": len(jobs), "jobs_per_s": round(len(jobs) / wall, 3),
            "mean_latency_s": round(statistics.mean(latencies), 3), **extra}
    print(json.dumps(line), flush=True)
    return line


def system_of(server: str) -> str:
    """export_off_2 -> export_off: the servers that run the same system."""
    return server.rsplit("_", 1)[0] if server[-1].isdigit() else server


def summary(lines: list[dict]) -> dict:
    """Each system's jobs/s range over its runs; whether each export-on system's slowest run is
    no slower than export off's slowest (inside its spread, or faster), and its mean as a share
    of export off's mean."""
    runs: dict[str, list[float]] = {}
    for line in lines:
        runs.setdefault(line["system"], []).append(line["jobs_per_s"])
    off = runs["export_off"]
    out = {"summary": {name: [min(v), max(v)] for name, v in runs.items()}}
    for name, v in runs.items():
        if name != "export_off":
            out[f"{name}_within_off_spread"] = min(v) >= min(off)
            out[f"{name}_mean_vs_off"] = round(statistics.mean(v) / statistics.mean(off), 3)
    print(json.dumps(out), flush=True)
    return out


def settled(read, every_s: float, size=lambda value: value, tries: int = 24):
    """``read()`` once two reads ``every_s`` apart have the same ``size`` (the exporters' last
    batches, and the server filing them), or the last read after ``tries``."""
    value, seen = None, None
    for _ in range(tries):
        time.sleep(every_s)
        value = read()
        if size(value) == seen:
            break
        seen = size(value)
    return value


def sink_spans(url: str) -> int:
    return settled(lambda: httpx.get(f"{url}/count", timeout=10).json()["spans"], every_s=8)


def start_systems(work: Path, targets: dict[str, str | None]) -> tuple[dict, dict]:
    """The servers, one engine each, up at once, each exporting to its target (None: off)."""
    ports = {name: free_port() for name in targets}
    servers = {name: start_loom(ports[name], otlp, work / f"{name}.log", "trace-load", workers=1)
               for name, otlp in targets.items()}
    for name, proc in servers.items():
        wait_healthy(f"http://127.0.0.1:{ports[name]}", proc)
    return servers, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


def one_run(name: str, url: str, args, round_: int, phoenix: PhoenixServer, sink: str, pid: int) -> dict:
    before = sink_spans(sink) if name == "export_sink" else 0
    cpu = cpu_seconds(pid)
    jobs, latencies, wall = asyncio.run(run_jobs(url, args.jobs, args.concurrency))
    extra = {"cpu_ms_per_job": ms_per_job(cpu_since(pid, cpu), len(jobs))}
    if name == "export_sink":
        extra["spans_received"] = sink_spans(sink) - before
    elif name == "export_phoenix" and round_ == 0:
        extra.update(check_traces(phoenix, "trace-load", url, jobs))
    return report(name, round_, jobs, latencies, wall, args.jobs, **extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-phoenix", action="store_true", help="export off and to the sink only")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    work = Path(tempfile.mkdtemp(prefix="loom-trace-load-"))
    phoenix, sink_port = PhoenixServer(work), free_port()
    sink_proc = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", "--port", str(sink_port)])
    sink = f"http://127.0.0.1:{sink_port}"
    targets = {"export_off": None, "export_off_2": None, "export_sink": sink}
    if not args.no_phoenix:
        phoenix.start()
        phoenix.wait_ready()
        targets["export_phoenix"] = phoenix.url
    servers = {}
    try:
        servers, urls = start_systems(work, targets)
        names, lines = list(urls), []
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each server first in turn
                lines.append(one_run(name, urls[name], args, r, phoenix, sink, servers[name].pid))
        summary(lines)
        if not args.no_phoenix:
            kill_backend_mid_run(args, phoenix, urls)
    finally:
        for proc in servers.values():
            stop_process(proc, timeout=120)
        stop_process(sink_proc)
        phoenix.stop()
    return 0


def kill_backend_mid_run(args, phoenix: PhoenixServer, urls: dict) -> None:
    """Phoenix killed once a fifth of the jobs have answered; then export off, for comparison."""
    def kill_at_a_fifth(done: int) -> None:
        if done == args.jobs // 5:
            phoenix.proc.kill()

    jobs, latencies, wall = asyncio.run(run_jobs(urls["export_phoenix"], args.jobs, args.concurrency, kill_at_a_fifth))
    report("export_phoenix_killed", args.rounds, jobs, latencies, wall, args.jobs)
    jobs, latencies, wall = asyncio.run(run_jobs(urls["export_off"], args.jobs, args.concurrency))
    report("export_off", args.rounds, jobs, latencies, wall, args.jobs)


if __name__ == "__main__":
    if os.environ.get("RAY_ADDRESS"):
        sys.exit("unset RAY_ADDRESS: each server starts its own Ray")
    sys.exit(main())
