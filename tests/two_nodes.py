"""A Ray cluster of two nodes on one machine, for tests/test_two_nodes_integration.py, which runs
this file as a process of its own (``python tests/two_nodes.py``; root, iproute2) and reads the
JSON line it prints last.

The second node lives in a network namespace of its own, joined to this one by a veth pair (the
addresses of a /24 that only these two hosts use); each node runs one Loom worker (custom
resources ``node-a``, ``node-b``; the first node has two, one for its worker's reservation and
one for the coordinator), the coordinator and the driver run on the first. Then:
1. forked jobs, their threads spread over both nodes and their prefixes pulled over the veth link;
2. the same jobs again (the model answers them right), running while the second node is lost (every process in its namespace killed, its link
   cut): their threads re-run on the first node, every job finishes right, and a new job succeeds
   within a bound.
Everything this starts is stopped, and the namespace deleted, however it ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ports import free_port

from bench.placement import forking_questions
from models import task

NEW_JOB_BOUND_S = 120.0
LOSS_BOUND_S = 180.0  # jobs running when the node is lost end within this (else their tasks are shown)
T0 = time.monotonic()


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def sweep_stale() -> None:
    """Deletes the namespaces (and so their links) of earlier runs whose process is gone."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0]
        pid = name.removeprefix("loom2n-")
        if name.startswith("loom2n-") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            sh("ip", "netns", "del", name, check=False)


class Namespace:
    """A network namespace with a veth link to this one: ``host`` here, ``peer`` there."""

    def __init__(self):
        n = os.getpid() % 200 + 20
        self.name, self.here, self.there = f"loom2n-{os.getpid()}", f"l2a{os.getpid() % 10**6}", f"l2b{os.getpid() % 10**6}"
        self.host, self.peer = f"10.231.{n}.1", f"10.231.{n}.2"

    def __enter__(self) -> Self:
        sweep_stale()
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.here, "type", "veth", "peer", "name", self.there)
        sh("ip", "link", "set", self.there, "netns", self.name)
        sh("ip", "addr", "add", f"{self.host}/24", "dev", self.here)
        sh("ip", "link", "set", self.here, "up")
        for cmd in (("addr", "add", f"{self.peer}/24", "dev", self.there), ("link", "set", self.there, "up"),
                    ("link", "set", "lo", "up")):
            sh("ip", "netns", "exec", self.name, "ip", *cmd)
        return self

    def kill_all(self) -> None:
        """Every process in the namespace, at once (a node lost with its pod), then its link cut."""
        for pid in sh("ip", "netns", "pids", self.name, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "link", "set", self.here, "down", check=False)

    def __exit__(self, *exc) -> None:
        self.kill_all()
        sh("ip", "link", "del", self.here, check=False)
        sh("ip", "netns", "del", self.name, check=False)


class TwoNodeCluster:
    """A Ray head here and a node in ``ns``, both under a temp dir of their own (so that ending
    them never touches another Ray cluster on this machine)."""

    def __init__(self, ns: Namespace):
        self.ns, self.tmp = ns, tempfile.mkdtemp(prefix="loom2n-")
        self.gcs = free_port(ns.host)
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self) -> str:
        common = ["--num-cpus", "2", "--temp-dir", self.tmp, "--disable-usage-stats", "--include-dashboard", "false"]
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address",
                        self.ns.host, "--port", str(self.gcs), "--resources", '{"node-a": 2}', *common],
                       check=True, env=self.env, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "ray.scripts.scripts", "start",
                        "--address", f"{self.ns.host}:{self.gcs}", "--node-ip-address", self.ns.peer,
                        "--resources", '{"node-b": 1}', *common[:2], "--disable-usage-stats"],
                       check=True, env=self.env, capture_output=True)
        return f"{self.ns.host}:{self.gcs}"

    def stop(self) -> None:
        """Ends this cluster's processes only (those that name its temp dir or its GCS port), then
        removes its temp dir."""
        import psutil

        mine = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and p.pid != os.getpid() and any(
            self.tmp in a or f":{self.gcs}" in a for a in p.info["cmdline"])]
        for p in mine:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(mine, timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


async def run_jobs(service, qs: list[task.Question]) -> list:
    from orchestrator.driver.records import JobRequest

    return list(await asyncio.gather(*(service.run(JobRequest(prompt=q.prompt)) for q in qs)))


def outcome(records, qs) -> dict:
    threads = [n for r in records for n in r.dag["nodes"] if n["kind"] == "thread"]
    pulled = [t for t in threads if (t["placement"] and t["placement"]["prefix"] or {}).get("source") == "pulled"]
    return {"jobs": len(records), "right": sum(r.status == "done" and r.result["answer"] == f"A: {q.answer}"
                                               for r, q in zip(records, qs)),
            "workers": sorted({t["worker"] for t in threads}), "pulled": len(pulled),
            "pulled_bytes": sum(t["placement"]["prefix"]["bytes"] for t in pulled),
            "re_run": sum(bool(n["placement"] and n["placement"]["attempts"]) for r in records for n in r.dag["nodes"]),
            "errors": sorted({r.error for r in records if r.error}),
            "prefixes": sorted({f'{(t["placement"]["prefix"] or {}).get("source")}: {(t["placement"]["prefix"] or {}).get("reason", "")}'
                                for t in threads if t["placement"]}),
            "got": [(str(r.status), (r.result or {}).get("answer"), f"A: {q.answer}") for r, q in zip(records, qs)]}


def scenario(address: str, ns: Namespace) -> dict:
    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.routing.link import LinkModel
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    progress("cluster up")
    ray.init(address=address, _node_ip_address=ns.host, namespace="loom", log_to_driver=False)
    cfg = load(overrides={"num_workers": 2, "worker_prefix": "loom-2n", "kv_transfer": "on",
                          "worker_resources": [{"node-a": 1}, {"node-b": 1}], "worker_cpu_binds": ["0", "1"],
                          "coordinator_resources": {"node-a": 0.01}})
    loom = runtime.start(cfg)
    progress("loom up")
    a, b = loom.pool.names()
    # threads spread: moving KV priced at nothing and both engines alike, so a busy holder sends some away
    loom.placer.set_link(LinkModel(bytes_per_s=1e13, fixed_s=0.0, bytes_per_token=dict(loom.placer.link.bytes_per_token),
                                   window=0))
    loom.placer.add_worker(b, loom.placer.profiles[a], loom.placer.link.bytes_per_token[b])
    service = JobService(loom.runner, InProcessJobStore())
    qs = forking_questions(6, 3, products=4)
    spread = outcome(asyncio.run(run_jobs(service, qs)), qs)
    progress("jobs spread over both nodes")
    return {"nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]), "spread": spread,
            "loss": asyncio.run(lose_node_b(service, qs, b, ns))}


def progress(what: str) -> None:
    print(f"{time.monotonic() - T0:6.1f} s  {what}", file=sys.stderr, flush=True)


def dump_tasks() -> None:
    """Where every pending task of this loop waits, coroutine by coroutine (to stderr), for a run
    that overstayed its bound."""
    for pending in asyncio.all_tasks():
        frames, coro = [], pending.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        print(f"--- {pending.get_name()}: " + " > ".join(frames), file=sys.stderr)


async def lose_node_b(service, qs: list[task.Question], b: str, ns: Namespace) -> dict:
    """Jobs running when node b is lost; then a new job, timed."""
    import ray

    jobs = asyncio.ensure_future(run_jobs(service, qs))
    worker_b = ray.get_actor(b, namespace="loom")
    while (await worker_b.counters.remote())["active"] == 0:  # node b is running some of their threads
        assert not jobs.done(), "the jobs ended before node b ran any of their threads"
        await asyncio.sleep(0.02)
    ns.kill_all()
    progress("node b lost")
    try:
        records = await asyncio.wait_for(asyncio.shield(jobs), LOSS_BOUND_S)
    except TimeoutError:
        dump_tasks()
        raise
    progress("the jobs running there finished")
    t0 = time.monotonic()
    after = await asyncio.wait_for(run_jobs(service, qs[:1]), NEW_JOB_BOUND_S)
    return {**outcome(records, qs), "new_job_right": outcome(after, qs[:1])["right"] == 1,
            "new_job_s": round(time.monotonic() - t0, 1), "lost_worker": b}


if __name__ == "__main__":
    with Namespace() as net:
        cluster = TwoNodeCluster(net)
        try:
            result = scenario(cluster.start(), net)
        finally:
            import ray

            ray.shutdown()  # before its cluster goes, or this process waits a minute for the GCS at exit
            cluster.stop()
    print(json.dumps(result), flush=True)
