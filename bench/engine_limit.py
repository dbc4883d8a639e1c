"""The best wall time the engine allows, and how close Loom gets: ``python -m bench.engine_limit``.

1. Keeps a reference engine beside Loom's (vLLM's offline ``LLM``, Loom's engine settings and
   binding, in a child process) and measures its costs with Loom's engine idle: prefill seconds
   per prompt token once, and the decode step's seconds (the difference between 132 and 4
   generated tokens, over 128; the median of 3) for 1 to 32 sequences at the start and, after
   each job, at the batch sizes that job's DAG needs. A shared VM's speed drifts by tens of per
   cent within minutes, so each job is timed with the costs measured right after it (each
   workload's ``step_1_ms`` gives the spread of the batch-1 step over its jobs).
2. Runs jobs through Loom one at a time, and for each job's DAG derives the engine's limit:
   a segment decodes at batch 1 after prefilling its uncached prompt tokens (the join's
   re-prefill included); a block's threads decode together, the batch shrinking as threads
   end; nested blocks the same inside their thread. Parallel efficiency = limit / Loom's wall.

3. Splits each node's time as the engine client saw it, from the worker's own request log:
   the wait before the worker took the request, the engine's time to first token, its seconds
   per decoded token (against the measured step) and the wait after the engine finished; each
   job's orchestration overhead: its wall time minus the engine's time (the worker's own
   timestamps) on the critical path; and the job's time outside its requests (gaps: before the
   first, at each fork and join, after the last).

Prints the step against batch size, per round and workload the figures (mean wall, mean limit,
efficiency, the sequential limit: every token at batch 1, the split) and the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass

from bench.common import machine
from bench.peers import workload
from models import task
from orchestrator.driver.records import JobRequest
from orchestrator.plan.dag import Node, ThreadDAG
from orchestrator.protocol.generation import request_id

BATCHES = (1, 2, 4, 8, 16, 32)
STEP_TOKENS = 128  # a step's cost: the time of this many more decoded tokens, over them
STEP_REPEATS = 3  # the median of this many
QUIET_S = 1.2  # vLLM's shared-memory readers busy-wait for 1 s after their last message


@dataclass(frozen=True)
class EngineCosts:
    step_s: dict[int, float]  # decode step seconds by number of sequences
    prefill_s_per_token: float

    def step(self, batch: int) -> float:
        """Linear between the measured batch sizes, flat beyond them."""
        sizes = sorted(self.step_s)
        if batch <= sizes[0]:
            return self.step_s[sizes[0]]
        for lo, hi in itertools.pairwise(sizes):
            if batch <= hi:
                f = (batch - lo) / (hi - lo)
                return self.step_s[lo] + f * (self.step_s[hi] - self.step_s[lo])
        return self.step_s[sizes[-1]]


def thread_seconds(lengths: list[int], index: int, costs: EngineCosts) -> float:
    """Generation time of thread ``index`` in a block whose threads have ``lengths`` tokens and
    start together: the batch is every thread not yet finished."""
    order = sorted(lengths)
    mine, done, t = lengths[index], 0, 0.0
    for i, length in enumerate(order):
        if length > done:
            t += (min(length, mine) - done) * costs.step(len(order) - i)
            done = min(length, mine)
        if done >= mine:
            break
    return t


def limit_s(dag: ThreadDAG, costs: EngineCosts) -> float:
    """The engine's best wall time for this DAG: the longest path, each node costing its
    uncached prompt's prefill plus its decode at its block's shrinking batch."""
    node_s = {n.id: _prefill(n, costs) + (n.tokens * costs.step(1) if n.kind == "segment" else 0.0)
              for n in dag.nodes}
    for threads in blocks(dag):
        lengths = [t.tokens for t in threads]
        for i, t in enumerate(threads):
            node_s[t.id] += thread_seconds(lengths, i, costs)
    return longest_path_s(dag, node_s)


def blocks(dag: ThreadDAG) -> list[list[Node]]:
    """The DAG's blocks: the threads of each fork (those after the same segment)."""
    by_parent: dict[tuple[int, ...], list[Node]] = {}
    for n in dag.nodes:
        if n.kind == "thread":
            by_parent.setdefault(tuple(dag.predecessors(n.id)), []).append(n)
    return list(by_parent.values())


def longest_path_s(dag: ThreadDAG, node_s: dict[int, float]) -> float:
    """The DAG's longest path, each node weighing its seconds (none: 0)."""
    best: dict[int, float] = {}
    for i in dag.topological_order():
        best[i] = max((best[p] for p in dag.predecessors(i)), default=0.0) + node_s.get(i, 0.0)
    return max(best.values(), default=0.0)


def overhead_s(record, log: dict[str, dict]) -> float:
    """Loom's orchestration overhead in a job: its wall time minus the engine's time on the
    critical path, each request's engine time from the worker's own timestamps (taken, to
    finished)."""
    dag = ThreadDAG.from_dict(record.dag)
    engine = {n.id: e["finished_at"] - e["submitted"] for n in dag.nodes
              if (e := log.get(request_id(record.id, n.id, n.prompt_tokens))) is not None}
    return (record.finished - record.started) - longest_path_s(dag, engine)


def sequential_limit_s(dag: ThreadDAG, costs: EngineCosts, prompt_tokens: int) -> float:
    """Every token at batch 1 after one prefill of the prompt: plain decoding of the same tokens."""
    return prompt_tokens * costs.prefill_s_per_token + dag.total_tokens() * costs.step(1)


def _prefill(n: Node, costs: EngineCosts) -> float:
    return max(0, n.prompt_tokens - n.cached_tokens) * costs.prefill_s_per_token


def batch_sizes(dag: ThreadDAG) -> list[int]:
    """The decode batches ``dag``'s limit needs measured: 1 and each block's width (at most 32;
    the sizes between are interpolated)."""
    return sorted({1, *(min(len(threads), max(BATCHES)) for threads in blocks(dag))})


class ReferenceEngine:
    """An offline vLLM engine (``LLM``) with Loom's settings and binding, in a child process,
    measuring its costs on request: its prefill seconds per token once at start, its decode step
    at the batch sizes asked for each time. Loom's engine stays loaded and idle meanwhile."""

    def __init__(self, cfg):
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        bind = cfg.worker_cpu_binds[0] if cfg.worker_cpu_binds else ""
        # on a GPU it shares the device with Loom's engine: the memory Loom's leaves, less a margin
        e = cfg.engine
        share = max(0.05, 0.95 - e.gpu_memory_utilization)
        self.child = ctx.Process(target=_serve_costs, args=(theirs, e.model, e.dtype, e.max_model_len,
                                                            e.block_size, e.kv_cache_gib, bind, share))
        self.child.start()  # not a pool: vLLM's engine starts processes of its own
        self.conn.recv()  # loaded

    def costs(self, batches: list[int]) -> EngineCosts:
        """Measured with neither engine spinning: vLLM's shared-memory readers busy-wait for a
        second after their last message, so each side waits that out first."""
        time.sleep(QUIET_S)
        self.conn.send(batches)
        costs = self.conn.recv()
        time.sleep(QUIET_S)
        return costs

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.conn.send(None)
        self.child.join()


def _serve_costs(conn, model: str, dtype: str, max_model_len: int, block_size: int, kv_cache_gib: int,
                 bind: str, gpu_share: float) -> None:
    os.dup2(2, 1)  # vLLM logs to stdout: keep the bench's stdout for the figures
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    if bind:  # the cores Loom binds its engine to
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=dtype, max_model_len=max_model_len, block_size=block_size,
              enable_prefix_caching=True, enforce_eager=True, max_num_seqs=max(BATCHES), seed=0,
              gpu_memory_utilization=gpu_share)  # CPU: ignored, VLLM_CPU_KVCACHE_SPACE sizes the cache
    rng = random.Random(0)
    prompts = [task.random_question(rng).prompt for _ in range(max(BATCHES))]

    def timed(batch: list, n: int) -> float:
        params = SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)
        t0 = time.perf_counter()
        llm.generate(batch, params, use_tqdm=False)
        return time.perf_counter() - t0

    def step(b: int) -> float:
        timed(prompts[:b], 4)  # warm-up; the prompts are cached from here on
        return statistics.median((timed(prompts[:b], STEP_TOKENS + 4) - timed(prompts[:b], 4)) / STEP_TOKENS
                                 for _ in range(STEP_REPEATS))

    longs = [{"prompt_token_ids": [rng.randrange(5, 100) for _ in range(max_model_len - 64)]} for _ in range(3)]
    shorts = [{"prompt_token_ids": [rng.randrange(5, 100) for _ in range(32)]} for _ in range(3)]
    prefill = max(0.0, (min(timed([p], 1) for p in longs) - min(timed([p], 1) for p in shorts)) / (max_model_len - 96))
    conn.send("loaded")
    while (batches := conn.recv()) is not None:
        conn.send(EngineCosts({b: step(b) for b in batches}, prefill))
    llm.llm_engine.engine_core.shutdown()


@dataclass(frozen=True)
class MeasuredJob:
    record: object  # the job's JobRecord
    costs: EngineCosts  # the reference engine's, measured right after the job


@dataclass
class JobFigures:
    workload: str
    jobs: int
    mean_wall_s: float
    mean_limit_s: float
    mean_sequential_limit_s: float
    parallel_efficiency: float  # limit / wall, over all jobs
    limit_speedup: float  # sequential limit / limit: what forking can buy on this engine
    mean_overhead_s: float  # wall minus the engine's time on the critical path (overhead_s)
    overhead_share: float  # of the wall time, over all jobs
    step_1_ms: list[float]  # the reference step at batch 1 beside these jobs: min, median, max


@dataclass
class NodeSplit:
    """Mean seconds of a node kind's requests, as the engine client and the worker saw them."""
    kind: str
    nodes: int
    node_s: float  # the engine client's decode call, start to end
    before_worker_s: float  # until the worker took the request
    engine_ttft_s: float  # the engine's first token
    engine_s_per_token: float  # the engine's decode, per token after the first
    after_engine_s: float  # from the engine's last token to the end of the call


@dataclass
class JobGaps:
    """Mean milliseconds of a job's wall time outside its requests, on the driver's clock."""
    start_ms: float  # the job's start to its first request's
    fork_ms: float  # a segment's end at a plan to its block's first thread's start
    join_ms: float  # a block's last thread's end to the start of the segment after its join
    end_ms: float  # the job's last request's end to the job's end


def gaps_ms(records: list) -> JobGaps:
    """Each gap's mean over every job (a fork's and a join's over every block)."""
    kinds: dict[str, list[float]] = {"start": [], "fork": [], "join": [], "end": []}
    for r in records:
        dag = ThreadDAG.from_dict(r.dag)
        ran = [n for n in dag.nodes if n.started]
        kinds["start"].append(ran[0].started - r.started)
        kinds["end"].append(r.finished - max(n.ended for n in ran))
        for join in (n for n in dag.nodes if n.kind == "join"):
            threads = [dag.nodes[i] for i in dag.predecessors(join.id)]
            parent = dag.nodes[dag.predecessors(threads[0].id)[0]]
            kinds["fork"].append(min(t.started for t in threads) - parent.ended)
            after = [n for n in ran if join.id in dag.predecessors(n.id)]
            kinds["join"] += [a.started - max(t.ended for t in threads) for a in after]
    mean = {k: round(1000 * sum(v) / len(v), 2) if v else 0.0 for k, v in kinds.items()}
    return JobGaps(mean["start"], mean["fork"], mean["join"], mean["end"])


async def run_measured(service, questions: list[task.Question], ref: ReferenceEngine) -> list[MeasuredJob]:
    """Each question's job, then the reference engine's costs at the job's batch sizes."""
    jobs = []
    for q in questions:
        record = await service.run(JobRequest(prompt=q.prompt))
        costs = await asyncio.to_thread(ref.costs, batch_sizes(ThreadDAG.from_dict(record.dag)))
        jobs.append(MeasuredJob(record, costs))
    return jobs


def figures(name: str, jobs: list[MeasuredJob], log: dict[str, dict]) -> JobFigures:
    records = [j.record for j in jobs]
    walls = [r.finished - r.started for r in records]
    dags = [ThreadDAG.from_dict(r.dag) for r in records]
    limits = [limit_s(d, j.costs) for d, j in zip(dags, jobs)]
    seq = [sequential_limit_s(d, j.costs, r.result["prompt_tokens"]) for d, j, r in zip(dags, jobs, records)]
    over = [overhead_s(r, log) for r in records]
    n = len(records)
    return JobFigures(name, n, round(sum(walls) / n, 3), round(sum(limits) / n, 3), round(sum(seq) / n, 3),
                      round(sum(limits) / sum(walls), 3), round(sum(seq) / sum(limits), 3),
                      round(sum(over) / n, 4), round(sum(over) / sum(walls), 3), spread_ms([j.costs.step(1) for j in jobs]))


def spread_ms(seconds: list[float]) -> list[float]:
    return [round(1000 * x, 2) for x in (min(seconds), statistics.median(seconds), max(seconds))]


def splits(records: list, log: dict[str, dict]) -> list[NodeSplit]:
    """Per node kind; ``log`` is the workers' request log by request id (workers/worker.py)."""
    rows: dict[str, list[tuple[float, ...]]] = {}
    for r in records:
        for n in r.dag["nodes"]:
            e = log.get(request_id(r.id, n["id"], n["prompt_tokens"]))
            if e is None or n["tokens"] < 2:
                continue
            rows.setdefault(n["kind"], []).append((
                n["ended"] - n["started"], e["submitted"] - n["started"], e["first_token_at"] - e["submitted"],
                (e["finished_at"] - e["first_token_at"]) / (n["tokens"] - 1), n["ended"] - e["finished_at"]))
    return [NodeSplit(kind, len(v), *(round(sum(c) / len(v), 5) for c in zip(*v))) for kind, v in rows.items()]


def workload_figures(name: str, jobs: list[MeasuredJob], log: dict[str, dict]) -> dict:
    records = [j.record for j in jobs]
    return {**asdict(figures(name, jobs, log)), "split": [asdict(s) for s in splits(records, log)],
            "gaps": asdict(gaps_ms(records))}


async def run_rounds(service, workloads: dict[str, list[task.Question]], rounds: int,
                     ref: ReferenceEngine) -> list[dict[str, list[MeasuredJob]]]:
    await service.run(JobRequest(prompt=workloads["five"][0].prompt))  # warm-up
    return [{name: await run_measured(service, qs, ref) for name, qs in workloads.items()} for _ in range(rounds)]


def main(argv=None) -> int:
    import ray

    from cluster import runtime
    from cluster.config import load
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=13)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = runtime.pin_controller(load())  # as `loom serve` starts it here; the reference engine bound alike
    workloads = {name: workload(name, args.jobs, args.seed) for name in ("five", "mix")}  # bench.peers' questions
    with ReferenceEngine(cfg) as ref:
        ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
        try:
            loom = runtime.start(cfg)
            service = JobService(loom.runner, InProcessJobStore())
            profile = ref.costs(list(BATCHES))
            rounds = asyncio.run(run_rounds(service, workloads, args.rounds, ref))
            log = {e["request_id"]: e for w in loom.pool.handles.values() for e in ray.get(w.request_log.remote())}
        finally:
            runtime.shutdown_actors(cfg)
            ray.shutdown()
    print(json.dumps({"step_profile": asdict(profile), "rounds": [
        {"round": i + 1, "workloads": [workload_figures(name, jobs, log) for name, jobs in r.items()]}
        for i, r in enumerate(rounds)], "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
