"""bench.cluster's runs: the workers as the bench reaches them, one open-loop run of one system at
one rate, and the figures of a run (every time in simulated seconds: real ones over the scale)."""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.cluster_client import ClientOrchestrator, EngineCall, JobRun
from bench.cluster_routers import CacheAware, RoundRobin
from bench.common import cpu_seconds, cpu_since, quantile
from bench.sim_documents import Document

# Loom under each fork policy (the job's ``loom.fork_policy``; "loom": the server's, adaptive), and the clients
LOOM_POLICIES = {"loom": None, "loom-eager": "eager", "loom-never": "never"}
SYSTEMS = (*LOOM_POLICIES, "client-rr", "client-cache-aware")
MAX_NUM_SEQS = 64  # the GPU profile's measured batches go up to 64
BLOCK_SIZE = 16  # vLLM's default on GPUs
MAX_MODEL_LEN = 40960


@dataclass(frozen=True)
class Setting:
    url: str
    workers: int
    scale: float  # real seconds per simulated one
    tpot_s: float  # a job's target: this per token on its critical path
    kill: int  # Loom's workers to kill mid-run
    max_step_s: float  # the profile's step at the largest batch (a run above it did not keep up)
    server_pid: int  # `loom serve`'s (its process tree's CPU is counted)
    jobs_out: str = ""  # also append each job's outcome here (JSON lines)


@dataclass
class Outcome:
    ok: bool
    latency_s: float  # real
    target_s: float  # simulated
    calls: list[EngineCall] = field(default_factory=list)


class Cluster:
    """The workers as the bench reaches them: Ray handles, request streams, and an index of what
    each engine holds, fed by the engines' own KV events."""

    def __init__(self, names: list[str]):
        import ray

        from orchestrator.routing.kv_events import SharedIndex
        from orchestrator.routing.kv_index import KVIndex

        self.handles = {name: ray.get_actor(name, namespace="loom") for name in names}
        self.index = SharedIndex(KVIndex(BLOCK_SIZE))
        self.streams, self.subscribers = {}, {}

    async def follow(self) -> None:
        """(Again) each worker's stream and KV events, once it is up (after a restart: a new engine)."""
        from orchestrator.routing.kv_events import KVEventSubscriber
        from orchestrator.routing.stream_client import StreamClient

        for info in await asyncio.gather(*(h.ready.remote() for h in self.handles.values())):
            if info.name in self.subscribers:
                self.subscribers[info.name].stop()
                self.streams[info.name].close()
            self.index.forget(info.name)
            self.streams[info.name] = StreamClient(info.stream)
            self.subscribers[info.name] = sub = KVEventSubscriber(info.name, info.kv, self.index)
            sub.start()

    def held(self, ids: list[int]) -> int:
        return max(self.index.matched(ids, list(self.handles)).values(), default=0)

    async def clear_caches(self) -> None:
        await asyncio.gather(*(h.reset_prefix_cache.remote() for h in self.handles.values()))
        await asyncio.sleep(0.5)  # the cleared events reach every index

    def close(self) -> None:
        for sub in self.subscribers.values():
            sub.stop()
        for stream in self.streams.values():
            stream.close()


def render(docs: list[Document], path: Path, tok) -> list[list[int]]:
    """Each job's prompt ids as Loom's chat endpoint makes them (every system sends those), and
    what the simulated model writes, in ``path``: each document with its question as the chat
    template rendered it (the engines read it when they start)."""
    from orchestrator.driver.job import JobRunner
    from orchestrator.driver.records import JobRequest

    runner = JobRunner(None, None, tok, MAX_MODEL_LEN)
    prompts = [runner.prepare(JobRequest(messages=[message(d)])) for d in docs]
    rendered = [tok.decode(p[1:] if p[:1] == [tok.bos_token_id] else p, skip_special_tokens=False) for p in prompts]
    path.write_text("".join(json.dumps({"text": r + d.text[len(d.question):]}) + "\n" for d, r in zip(docs, rendered)))
    return prompts


async def all_runs(setting: Setting, names: list[str], tok, docs: list[Document], prompts: list[list[int]],
                   rates: list[float], systems: list[str], rounds: int, seed: int) -> list[dict]:
    import ray

    ray.init(address="auto", namespace="loom", log_to_driver=False)
    cluster, rows = Cluster(names), []
    await cluster.follow()
    try:
        for r in range(rounds):
            for rate in rates:
                for system in systems[r % len(systems):] + systems[:r % len(systems)]:
                    await cluster.clear_caches()
                    row = await one_run(setting, cluster, tok, system, rate, docs, prompts, random.Random(seed + r))
                    row.update(round=r)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        cluster.close()
        ray.shutdown()
    return rows


def message(doc: Document) -> dict:
    return {"role": "user", "content": doc.question.strip()}


async def one_run(setting: Setting, cluster: Cluster, tok, system: str, rate: float, docs: list[Document],
                  prompts: list[list[int]], rng: random.Random) -> dict:
    at, gaps = 0.0, []
    for _ in docs:
        gaps.append(at)
        at += rng.expovariate(rate) * setting.scale
    async with httpx.AsyncClient(base_url=setting.url, timeout=36000,
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)) as http:
        calls_before = await coordinator_calls(http)
        if system in LOOM_POLICIES:
            ask = lambda i: ask_loom(http, docs[i], LOOM_POLICIES[system], target_s(docs[i], setting) * setting.scale)
        else:
            router = (RoundRobin(list(cluster.handles)) if system == "client-rr"
                      else CacheAware(list(cluster.handles), BLOCK_SIZE))
            client = ClientOrchestrator(cluster.streams, router, tok, cluster.held, MAX_MODEL_LEN)
            ask = lambda i: client.run(f"bench-{system}-{i}-{time.monotonic_ns()}", prompts[i])
        killing = asyncio.create_task(kill_midway(cluster, setting.kill, at / 2)) if system in LOOM_POLICIES else None
        t0, cpu = time.perf_counter(), cpu_seconds(setting.server_pid)
        runs = await asyncio.gather(*(started(gap, ask, i) for i, gap in enumerate(gaps)))
        wall, spent = time.perf_counter() - t0, cpu_since(setting.server_pid, cpu)
        calls = (await coordinator_calls(http)) - calls_before
        outcomes = [await outcome(http, run, target_s(d, setting)) for run, d in zip(runs, docs)]
    if killing is not None:
        await killing
        if setting.kill:
            await cluster.follow()
    if setting.jobs_out:
        keep_jobs(setting, system, rate, outcomes)
    return {"system": system, "workers": setting.workers, "rate": rate, "jobs": len(docs), "time_scale": setting.scale,
            **figures(outcomes, rate, wall / setting.scale, setting), "coordinator_calls_per_s": round(calls * setting.scale / wall, 2),
            **control_plane(spent, wall, setting.scale)}


def keep_jobs(setting: Setting, system: str, rate: float, outcomes: list[Outcome]) -> None:
    with open(setting.jobs_out, "a") as f:
        f.writelines(json.dumps({"system": system, "workers": setting.workers, "rate": rate, "job": i, "ok": o.ok,
                                 "latency_s": round(o.latency_s / setting.scale, 3), "target_s": round(o.target_s, 3),
                                 "requests": len(o.calls)}) + "\n" for i, o in enumerate(outcomes))


def control_plane(spent: dict[str, float], wall: float, scale: float) -> dict:
    """Cores Loom's coordinator and ingress (its drivers and placement) kept busy, at the speed of
    the simulated clock (real shares times the scale: what engines at full speed would ask)."""
    ingress = sum(s for name, s in spent.items() if name.startswith("ray::ServeReplica"))
    return {"coordinator_cores": round(spent.get("ray::Coordinator", 0.0) * scale / wall, 3),
            "ingress_cores": round(ingress * scale / wall, 3)}


async def started(gap: float, ask, i: int):
    await asyncio.sleep(gap)
    t0 = time.perf_counter()
    try:
        return await ask(i), time.perf_counter() - t0
    except (httpx.HTTPError, ConnectionError, RuntimeError) as e:
        return e, time.perf_counter() - t0


def target_s(doc: Document, setting: Setting) -> float:
    """The job's latency target in simulated seconds: its critical path's tokens at the target per token."""
    return doc.critical_tokens * setting.tpot_s


async def ask_loom(http: httpx.AsyncClient, doc: Document, policy: str | None, target_real_s: float) -> dict:
    """The job through Loom's chat API, with its fork policy (None: the server's) and its latency
    target on the real clock (the simulated clock runs ``scale`` times slower)."""
    loom = {"latency_target_s": target_real_s, **({"fork_policy": policy} if policy else {})}
    r = await http.post("/v1/chat/completions", json={"model": "loom-arith", "messages": [message(doc)], "loom": loom})
    r.raise_for_status()
    return r.json()


async def kill_midway(cluster: Cluster, k: int, after_s: float) -> None:
    import ray

    if k:
        await asyncio.sleep(after_s)
        for handle in list(cluster.handles.values())[:k]:
            ray.kill(handle, no_restart=False)  # Ray starts it again: a new, empty engine


async def coordinator_calls(http: httpx.AsyncClient) -> int:
    return (await http.get("/healthz")).json().get("coordinator", {}).get("calls", 0)


async def outcome(http: httpx.AsyncClient, run: tuple, target_s: float) -> Outcome:
    """A job's outcome: a client's run as it is, Loom's from its job record (its engine requests)."""
    result, latency = run
    if isinstance(result, BaseException):
        return Outcome(False, latency, target_s)
    if isinstance(result, JobRun):
        return Outcome(True, latency, target_s, result.calls)
    rec = (await http.get(f"/v1/jobs/{result['loom']['job_id']}")).json()
    return Outcome(rec["status"] == "done", latency, target_s, [loom_call(n) for n in rec["dag"]["nodes"] if n["placement"]])


def loom_call(node: dict) -> EngineCall:
    p = node["placement"]
    itl = (node["ended"] - node["first_token"]) / (node["tokens"] - 1) if node["tokens"] > 1 and node["first_token"] else 0.0
    return EngineCall(p["worker"], node["prompt_tokens"], node["cached_tokens"], max(p["matched"].values(), default=0),
                      p.get("decided_ms", 0.0), p.get("decided_cpu_ms", 0.0), itl, len(p.get("attempts", [])))


def figures(outcomes: list[Outcome], rate: float, sim_wall_s: float, setting: Setting) -> dict:
    """goodput: the arrival rate times the share of jobs in their target (the rate of work served
    within it, as DistServe defines it); jobs_per_s: jobs done over the run's whole span."""
    done = [o for o in outcomes if o.ok]
    latencies = [o.latency_s / setting.scale for o in done]
    good = sum(o.latency_s / setting.scale <= o.target_s for o in done)
    calls = [c for o in done for c in o.calls]
    prompt = sum(c.prompt_tokens for c in calls) or 1
    itls = [c.itl_s for c in calls if c.itl_s]
    itl_ms = 1000 * statistics.mean(itls) / setting.scale if itls else 0.0
    return {"goodput": round(rate * good / len(outcomes), 4), "good_share": round(good / len(outcomes), 3),
            "jobs_per_s": round(len(done) / sim_wall_s, 4),
            "p50_s": round(quantile(latencies, 0.5), 2), "p99_s": round(quantile(latencies, 0.99), 2),
            "recomputed_prefix_share": round(sum(max(0, c.held_tokens - c.cached_tokens) for c in calls) / prompt, 4),
            "cached_share": round(sum(c.cached_tokens for c in calls) / prompt, 4),
            "placement_ms_p99": round(quantile([c.decided_ms for c in calls], 0.99), 3),
            "placement_cpu_ms_p99": round(quantile([c.decided_cpu_ms for c in calls], 0.99), 3),
            "itl_ms": round(itl_ms, 2), "kept_up": itl_ms <= 1100 * setting.max_step_s, "lost": len(outcomes) - len(done),
            "reruns": sum(c.reruns for c in calls)}

