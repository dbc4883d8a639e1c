"""Loom against what a user would run instead, on this machine's engine settings:
``python -m bench.peers --questions 16 --concurrency 1,8``.

Three systems answer the same questions (same model, float32, block size 32, prefix caching,
eager, greedy, and the same split of the machine's cores: the engine's threads on the cores
``runtime.pin_controller`` gives the engines, everything else on the rest). Both servers are up
for the whole run and take turns: for each round, workload and concurrency, each system in
turn, so that this shared VM's drift (its speed moved by up to 50% within minutes on
2026-12-03) falls on all of them alike; the one not answering is idle.

- ``plain``: vLLM's own OpenAI server (``vllm.entrypoints.openai.api_server``), one completion
  per question: the model writes its threads inline, one after another.
- ``client``: a client-side fork/join orchestrator over that same server, as ThreadWeaver's
  trajectory generator drives it (facebookresearch/threadweaver,
  data_generation/src/generate_trajectories.py: completions on token ids, stopping at
  ``</Outlines>`` and ``</Thread>``): decode to ``</Outlines>``, one completion per outline
  (context + its thread header, to ``</Thread>``) run concurrently, join by appending each
  thread in plan order, go on.
- ``loom``: Loom's Serve app over HTTP (``POST /v1/chat/completions``), one worker, its fork
  policy adaptive; ``loom-eager`` and ``loom-never``: the same server, each request asking to fork
  eagerly or never (``loom.fork_policy``).

Every system gets the same prompt ids: the chat template applied to the question, as Loom's
chat endpoint applies it.

Two workloads: ``mix`` (fresh questions of 2-5 terms, at least two products: every one forks)
and ``five`` (five three-digit products: long threads). Prints one JSON line per round, system,
workload and concurrency: mean/p50/p90 latency, questions per second, exact match, and tokens
generated; then, per workload and concurrency, Loom's latency and throughput as ratios of each
other system's in the same round (``ratios``), with the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import cpu_seconds, cpu_since, latency_figures, machine, ms_per_job, run_concurrently
from bench.parallel_vs_sequential import question_with
from bench.peers_plot import plot
from models import task
from orchestrator.driver.job import extract_answer
from orchestrator.plan.formats import ThreadResult
from orchestrator.plan.published import get_format
from orchestrator.protocol.segment import Finish

TW = get_format("threadweaver")
# Loom's systems: one server, each job asking for a fork policy ("loom": the server's, adaptive)
LOOM_POLICIES = {"loom": None, "loom-eager": "eager", "loom-never": "never"}
# between two turns: vLLM's processes keep spinning for a second after their last message
# (vllm/distributed/device_communicators/shm_broadcast.py: SpinCondition's busy_loop_s), so the
# server that just answered would take CPU from the next turn's first second
SETTLE_S = 2.0


@dataclass
class Answer:
    text: str
    tokens: int
    job_id: str = ""  # Loom's job (its record says how each fork ran)


def workload(name: str, n: int, seed: int) -> list[task.Question]:
    rng = random.Random(seed)
    if name == "five":
        return [question_with(5, rng) for _ in range(n)]
    out: list[task.Question] = []
    while len(out) < n:
        q = task.random_question(rng)
        if len(q.products) >= 2 and len(q.terms) >= 2:
            out.append(q)
    return out


class PlainServer:
    """vLLM's OpenAI server on this machine, with Loom's engine settings."""

    def __init__(self, cfg, port: int):
        self.cfg, self.port = cfg, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        c, e = self.cfg, self.cfg.engine
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", e.model,
                "--served-model-name", "plain", "--dtype", e.dtype, "--max-model-len", str(e.max_model_len),
                "--block-size", str(e.block_size), "--enable-prefix-caching", "--max-num-seqs", str(e.max_num_seqs),
                "--port", str(self.port), "--host", "127.0.0.1", "--seed", "0"]
        if e.enforce_eager:
            args.append("--enforce-eager")
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(e.kv_cache_gib)}
        if c.worker_cpu_binds:  # the engine's threads where Loom's run (the rest of vllm on the kept cores)
            env["VLLM_CPU_OMP_THREADS_BIND"] = c.worker_cpu_binds[0]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError("vllm serve did not come up in 600 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def complete(client: httpx.AsyncClient, ids: list[int], max_tokens: int, stop: list[str]) -> dict:
    r = await client.post("/v1/completions", json={
        "model": "plain", "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0, "stop": stop or None,
        "include_stop_str_in_output": True, "skip_special_tokens": False, "spaces_between_special_tokens": False})
    r.raise_for_status()
    body = r.json()
    return {"text": body["choices"][0]["text"], "stop": body["choices"][0].get("stop_reason"),
            "tokens": body["usage"]["completion_tokens"]}


async def plain(client, tok, ids: list[int], room: int) -> Answer:
    out = await complete(client, ids, room - len(ids), [])
    return Answer(out["text"], out["tokens"])


async def client_side(client, tok, ids: list[int], room: int) -> Answer:
    """Fork at ``</Outlines>``, one completion per outline, join as ThreadWeaver's controller
    joins (plan/published.py), go on."""
    text, tokens, prompt_len = "", 0, len(ids)
    while len(ids) < room:
        out = await complete(client, ids, room - len(ids), [TW.fork_stop])
        text, tokens = text + out["text"], tokens + out["tokens"]
        ids = ids + tok.encode(out["text"], add_special_tokens=False)
        plan = TW.find_plan(tok.decode(ids[prompt_len:], skip_special_tokens=False))
        if out["stop"] != TW.fork_stop or plan is None or not plan.outlines:
            return Answer(text, tokens)
        headers = [tok.encode(TW.thread_header(o), add_special_tokens=False) for o in plan.outlines]
        threads = await asyncio.gather(*(complete(client, ids + h, room - len(ids) - len(h), [TW.thread_close])
                                         for h in headers))
        results = [ThreadResult(o, t["text"], Finish.STOP if t["stop"] == TW.thread_close else Finish.EOS)
                   for o, t in zip(plan.outlines, threads)]
        joined = TW.render_join("", plan, results)
        text, tokens = text + joined, tokens + sum(t["tokens"] for t in threads)
        ids = ids + tok.encode(joined, add_special_tokens=False)
        if TW.ends_generation(results):
            return Answer(text, tokens)
    return Answer(text, tokens)


def messages(q: task.Question) -> list[dict]:
    return [{"role": "user", "content": q.prompt.strip()}]


async def ask_loom(client, q: task.Question, policy: str | None = None) -> Answer:
    """One ``/v1/chat/completions`` request, as an OpenAI client would send it (with a fork policy:
    ``loom.fork_policy``)."""
    body = {"model": "loom-arith", "messages": messages(q), **({"loom": {"fork_policy": policy}} if policy else {})}
    r = await client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    body = r.json()
    return Answer(body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"], body["loom"]["job_id"])


async def measure(system: str, ask, questions: list[task.Question], concurrency: int) -> tuple[dict, list[Answer]]:
    await ask(questions[0])  # warm-up
    answers, latencies, wall = await run_concurrently(ask, questions, concurrency)
    right = sum(extract_answer(a.text) == f"A: {q.answer}" for q, a in zip(questions, answers))
    return {"system": system, "concurrency": concurrency, "questions": len(questions), **latency_figures(latencies),
            "questions_per_s": round(len(questions) / wall, 3), "exact": round(right / len(questions), 3),
            "tokens": sum(a.tokens for a in answers)}, answers


async def over(url: str, system: str, ask, questions: list[task.Question], concurrency: int) -> dict:
    """``measure`` with one HTTP client; ``ask(client, question)`` answers one question. Each row
    also says the CPU milliseconds per job every process on this machine under this bench spent
    (both servers', by process title: the one not answering is idle); Loom's rows also count how
    its forks ran, from the job records (read after the timed run)."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        cpu = cpu_seconds(os.getpid())
        row, answers = await measure(system, functools.partial(ask, client), questions, concurrency)
        row["cpu_ms_per_job"] = ms_per_job(cpu_since(os.getpid(), cpu), len(questions) + 1)  # (and the warm-up)
        if system in LOOM_POLICIES:
            row["forks"] = await fork_widths(client, answers)
        return row


async def fork_widths(client, answers: list[Answer]) -> dict:
    """Of the jobs' forks: how many ran every thread at once, ran narrower, were refused."""
    counts = {"all": 0, "narrowed": 0, "refused": 0}
    for a in answers:
        record = (await client.get(f"/v1/jobs/{a.job_id}")).json()
        for fork in (n["fork"] for n in record["dag"]["nodes"] if n["fork"]):
            kind = "refused" if fork["width"] == 0 else "all" if fork["width"] == fork["threads"] else "narrowed"
            counts[kind] += 1
    return counts


@contextlib.contextmanager
def loom_server(cfg):
    """Loom's Serve app on ``cfg.port`` (``cfg`` as ``runtime.pin_controller`` left it, which
    ``loom serve`` calls here too); yields its URL."""
    import ray
    from ray import serve

    from cluster import ingress, runtime
    from cluster.app import app_builder

    ingress.use(cfg.ingress)  # as `loom serve` starts Ray
    ray.init(include_dashboard=False, log_to_driver=False, namespace="loom")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
        serve.run(app_builder(cfg.to_dict()), name="loom", route_prefix="/")
        yield f"http://127.0.0.1:{cfg.port}"
    finally:
        serve.shutdown()
        runtime.shutdown_actors(cfg)
        ray.shutdown()


def run_all(askers: dict, workloads: dict, levels: list[int], rounds: int) -> list[dict]:
    """Every system in turn at each round, workload and concurrency, the order rotated by one each
    round (the first system on a server after the other server's turn ran slower: up to 30% on
    2026-12-05, docs/experiments.md), ``SETTLE_S`` apart; ``askers``: system -> (URL,
    ask(client, question))."""
    rows, systems = [], list(askers)
    for r in range(1, rounds + 1):
        turn = systems[(r - 1) % len(systems):] + systems[:(r - 1) % len(systems)]
        for name, qs in workloads.items():
            for c in levels:
                for system in turn:
                    url, ask = askers[system]
                    time.sleep(SETTLE_S)
                    rows.append({"round": r, "workload": name, **asyncio.run(over(url, system, ask, qs, c))})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per workload and concurrency, Loom's mean latency and questions per second over each
    other system's, one value per round (the systems of a round ran back to back)."""
    at = {(r["round"], r["workload"], r["concurrency"], r["system"]): r for r in rows}
    out = []
    for workload, c in sorted({(w, c) for _, w, c, _ in at}):
        rounds = sorted({r for r, w, cc, _ in at if (w, cc) == (workload, c)})
        row = {"workload": workload, "concurrency": c}
        for other in ("plain", "client", *(s for s in LOOM_POLICIES if s != "loom")):
            pairs = [(at[r, workload, c, "loom"], at[r, workload, c, other]) for r in rounds
                     if (r, workload, c, "loom") in at and (r, workload, c, other) in at]
            if pairs:
                row[f"latency_vs_{other}"] = [round(mine["mean_s"] / theirs["mean_s"], 3) for mine, theirs in pairs]
                row[f"throughput_vs_{other}"] = [round(mine["questions_per_s"] / theirs["questions_per_s"], 3)
                                                 for mine, theirs in pairs]
        out.append(row)
    return out


def main(argv=None) -> int:
    from cluster import runtime
    from cluster.config import load
    from orchestrator.driver.job import JobRunner
    from orchestrator.driver.records import JobRequest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=40)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--workloads", default="mix,five")
    p.add_argument("--systems", default="plain,client,loom",
                   help=f"of plain, client (these two on one vLLM server), {', '.join(LOOM_POLICIES)} (one Loom server)")
    p.add_argument("--rounds", type=int, default=1, help="every system at every level, this many times")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--port", type=int, default=8731)
    p.add_argument("--out", default="", help="also write the rows here (JSON)")
    p.add_argument("--plot", default="", help="also plot them here (PNG: bench/peers_plot.py)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Every system on the same split of this machine's cores: the engine's threads on the engine's
    # cores, all else (vLLM's server and engine core, Ray, Loom, this load generator) on the rest
    cfg = runtime.pin_controller(load(overrides={"num_workers": 1, "port": args.port + 1}))
    tok = runtime.load_tokenizer(cfg)
    runner = JobRunner(None, None, tok, cfg.engine.max_model_len)  # its prompt ids: the same on every system
    levels = [int(x) for x in args.concurrency.split(",")]
    workloads = {w: workload(w, args.questions, args.seed) for w in args.workloads.split(",")}
    systems = args.systems.split(",")
    unknown = set(systems) - {"plain", "client", *LOOM_POLICIES}
    if unknown:
        p.error(f"unknown system(s): {', '.join(sorted(unknown))} (plain, client, {', '.join(LOOM_POLICIES)})")

    def on_vllm(fn):
        return lambda client, q: fn(client, tok, runner.prepare(JobRequest(messages=messages(q))), cfg.engine.max_model_len)

    with contextlib.ExitStack() as up:
        askers = {}
        if "plain" in systems or "client" in systems:
            url = up.enter_context(PlainServer(cfg, args.port)).url
            askers.update({s: (url, on_vllm(fn)) for s, fn in (("plain", plain), ("client", client_side))
                           if s in systems})
        looms = [s for s in systems if s in LOOM_POLICIES]
        if looms:
            url = up.enter_context(loom_server(cfg))
            askers.update({s: (url, functools.partial(ask_loom, policy=LOOM_POLICIES[s])) for s in looms})
        rows = run_all(askers, workloads, levels, args.rounds)
    summary = ratios(rows)
    for row in summary:
        print(json.dumps(row))
    print(json.dumps({"machine": machine()}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "rows": rows, "ratios": summary}, f, indent=1)
    if args.plot:
        plot(rows, machine(), Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
