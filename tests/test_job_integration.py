"""A real job on real Ray with a real vLLM engine and the committed model."""
from __future__ import annotations

import re

import pytest
import ray

from orchestrator.driver.records import JobRequest
from orchestrator.protocol.fork import ForkPolicy
from orchestrator.protocol.generation import request_id

pytestmark = pytest.mark.integration
QUESTION = "Q: 905*9+14*3+220*6+3+71*0"


async def run(service, prompt=QUESTION, **kw):
    return await service.run(JobRequest(prompt=prompt + "\n", **kw))


def threads(record):
    return [n for n in record.dag["nodes"] if n["kind"] == "thread"]


async def test_forked_job_answers_and_runs_one_thread_per_product(service):
    rec = await run(service)
    assert rec.status == "done", rec.error
    assert re.match(r"^A: \d+$", rec.result["answer"])
    assert [t["label"] for t in threads(rec)] == ["1", "2", "3", "4"]  # one per product of QUESTION
    assert rec.result["critical_path_tokens"] < rec.result["total_tokens"]
    assert rec.notes == []


def worker_log(loom, rec) -> dict[int, dict]:
    """Node id -> its engine request as the worker logged it."""
    log = {r["request_id"]: r for w in loom.pool.handles.values() for r in ray.get(w.request_log.remote())}
    nodes = {request_id(rec.id, n["id"], n["prompt_tokens"]): n["id"] for n in rec.dag["nodes"]}
    return {nodes[rid]: r for rid, r in log.items() if rid in nodes}


async def test_threads_run_concurrently_in_the_engine(service, loom):
    rec = await run(service)
    log = worker_log(loom, rec)
    spans = [log[t["id"]] for t in threads(rec)]
    latest_first = max(s["first_token_at"] for s in spans)
    earliest_end = min(s["finished_at"] for s in spans)
    assert latest_first < earliest_end  # every thread had produced a token before any finished


async def test_threads_hit_the_prefix_cache(service):
    rec = await run(service)
    prefix = next(n for n in rec.dag["nodes"] if n["kind"] == "segment")
    shared = prefix["prompt_tokens"] + prefix["tokens"]
    for t in threads(rec):
        assert t["cached_tokens"] >= (shared // 32) * 32 - 32 > 0, t


async def test_answer_equals_threads_run_one_after_the_other(service):
    parallel = await run(service)
    waves = await run(service, budget={"max_width": 1})
    assert waves.result["text"] == parallel.result["text"]
    assert any("waves" in n for n in waves.notes)


async def test_sequential_decoding_shares_the_prefix_and_writes_the_threads_itself(service):
    parallel = await run(service)
    sequential = await run(service, mode="sequential")
    fork = parallel.result["text"].index("</Outlines>") + len("</Outlines>")
    assert sequential.result["text"][:fork] == parallel.result["text"][:fork]
    assert sequential.result["text"].count("<Thread>") == parallel.result["text"].count("<Thread>") == 4
    assert threads(sequential) == [] and sequential.result["critical_path_tokens"] == sequential.result["total_tokens"]


async def test_refused_fork_falls_back_to_sequential_and_says_so(service):
    rec = await run(service, budget={"min_thread_tokens": 4000})
    sequential = await run(service, mode="sequential")
    assert rec.status == "done" and rec.result["text"] == sequential.result["text"]
    assert threads(rec) == [] and any("refused" in n for n in rec.notes)


async def test_the_fork_policy_never_refuses_as_the_budget_does(service):
    rec = await run(service, fork_policy=ForkPolicy.NEVER)
    sequential = await run(service, mode="sequential")
    assert rec.status == "done" and rec.result["text"] == sequential.result["text"] and threads(rec) == []
    [fork] = [n["fork"] for n in rec.dag["nodes"] if n["fork"]]
    assert (fork["threads"], fork["policy"], fork["width"]) == (4, "never", 0) and rec.usage["forks"] == 0


async def test_the_adaptive_width_is_the_least_of_its_recorded_estimates(service):
    """The engine's measured profile and load, as the record keeps them, chose the width."""
    rec = await run(service)
    [fork] = [n["fork"] for n in rec.dag["nodes"] if n["fork"]]
    estimates = fork["advice"]["estimates"]
    assert fork["policy"] == "adaptive" and [e["width"] for e in estimates] == [0, 1, 2, 3, 4]
    least = min(estimates, key=lambda e: (round(e["job_s"] + e["others_s"], 9), e["width"]))
    assert fork["advice"]["width"] == least["width"] == fork["width"] == len(threads(rec))
    assert all(e["others_s"] == 0 for e in estimates)  # nothing else ran: no other request to slow


async def test_token_budget_exhaustion_cancels_and_is_recorded(service):
    rec = await run(service, budget={"max_total_tokens": 60, "min_thread_tokens": 1})
    assert rec.status == "cancelled"
    assert any("exhausted" in n for n in rec.notes)
    assert rec.result["finish"] == "budget"
    nodes = rec.dag["nodes"]  # used + leased never passed 60; a node may overshoot by a streamed chunk
    assert sum(n["tokens"] for n in nodes) == rec.usage["tokens"] <= 60 + 8 * len(nodes)


async def test_requests_nobody_streams_send_their_first_tokens_and_their_end(service, loom):
    rec = await run(service)
    log = worker_log(loom, rec)
    tokens = {n["id"]: n["tokens"] for n in rec.dag["nodes"] if n["id"] in log}
    assert len(log) > len(threads(rec)) and all(r["quiet"] and r["chunks"] <= 2 for r in log.values()), log
    assert {i: r["tokens"] for i, r in log.items()} == tokens


async def test_a_streamed_job_streams_its_main_lane_and_its_threads_stay_quiet(service, loom):
    texts = []
    rec = await service.run(JobRequest(prompt=QUESTION + "\n"), emit=texts.append)
    log = worker_log(loom, rec)
    main = log[rec.dag["nodes"][0]["id"]]
    assert not main["quiet"] and main["chunks"] > 2  # at most 8 tokens a chunk
    assert all(log[t["id"]]["quiet"] for t in threads(rec))
    assert rec.status == "done" and "".join(texts)


async def test_a_deadline_stops_the_job_and_what_its_engines_made_is_charged(service):
    """Five three-digit products take this engine over a second; a deadline of 50 ms passes while
    the job decodes, wherever it then is (the main segment, or quiet threads stopped by the
    engine client's timer). What the engines made for the stopped requests is charged, once.
    (That a quiet request's held-back tokens are charged is tested exactly in test_engine_client.py.)"""
    rec = await run(service, prompt="Q: 905*9+714*3+220*6+383*7+671*8", budget={"deadline_s": 0.05})
    assert rec.status == "cancelled" and rec.result["finish"] == "budget"
    assert any("deadline of 0.05s passed" in n for n in rec.notes), rec.notes
    assert [n for n in rec.dag["nodes"] if n["finish"] == "budget"]
    assert sum(n["tokens"] for n in rec.dag["nodes"]) == rec.usage["tokens"]


async def test_no_product_question_does_not_fork(service):
    rec = await run(service, prompt="Q: 12+345")
    assert rec.status == "done" and threads(rec) == [] and "<Parallel>" not in rec.result["text"]
