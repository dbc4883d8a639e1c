"""Engines over two tensor-parallel ranks (vLLM's CPU backend: a process per rank, one core
each): forked jobs get the same answers as on the session's single-rank engines, and a prefix
moves between two such engines rank by rank (rank i's shard of every block to rank i), with
the holder's greedy tokens and nothing recomputed."""
from __future__ import annotations

import pytest
import ray
from engine_requests import FOUR, generate, no_blocks_in_use, prompt_and_held
from ray.util.placement_group import placement_group_table

from cluster import runtime
from cluster.config import load
from models.task import Question, Term
from orchestrator.driver.records import JobRequest
from orchestrator.protocol.kv import PULLED_KEY, PullReport
from orchestrator.service.jobs import JobService
from orchestrator.service.store import InProcessJobStore

pytestmark = pytest.mark.integration
QUESTIONS = [FOUR, Question((Term(907, 8), Term(33, 5), Term(512, 9))),
             Question((Term(64, 2), Term(718, 6), Term(29, 7), Term(405, 3), Term(88, 4)))]


def tp2_config():
    """Two workers of two ranks each, a CPU of the session's Ray cluster reserved for each."""
    return load(overrides={"num_workers": 2, "worker_prefix": "loom-tp2", "kv_transfer": "on", "worker_num_cpus": 1,
                           "worker_cpu_binds": ["0|1", "0|1"], "engine": {"tensor_parallel_size": 2}})


@pytest.fixture(scope="module")
def tp2(loom):
    """The two workers, beside the session's (which stay as they are)."""
    cfg = tp2_config()
    started = runtime.start(cfg)
    yield started
    runtime.shutdown_actors(cfg, coordinator=False)  # after the last test's own stop: nothing left


async def answers(runner) -> list:
    service = JobService(runner, InProcessJobStore())
    return [await service.run(JobRequest(prompt=q.prompt)) for q in QUESTIONS]


async def test_forked_jobs_answer_the_same_over_two_ranks_as_over_one(tp2, runner):
    ours, single = await answers(tp2.runner), await answers(runner)
    for q, a, b in zip(QUESTIONS, ours, single):
        assert a.status == b.status == "done", (a.error, b.error)
        assert a.result["answer"] == b.result["answer"] == f"A: {q.answer}"
        assert sum(n["kind"] == "thread" for n in a.dag["nodes"]) >= 2  # it forked


async def test_a_prefix_moves_rank_by_rank_between_two_tensor_parallel_engines(tp2, loom):
    w0, w1 = (tp2.pool.handle(n) for n in tp2.pool.names())
    await no_blocks_in_use(w0, w1)
    ids, held = prompt_and_held(loom)
    reference, _ = await generate(w0, "tp-ref", ids)
    hold = await w0.hold.remote("tp-hold", ids, held)
    assert len(hold.ports) == 2  # a side channel per rank
    tokens, last = await generate(w1, "tp-pull", ids, kv=hold.to_params())
    report = PullReport(**last.kv_params[PULLED_KEY])
    assert report.ok, report.error
    assert tokens == reference and last.cached_tokens == held
    assert report.bytes == report.blocks * hold.block_bytes  # both ranks' shards, the whole block
    await no_blocks_in_use(w0, w1)


def test_each_worker_runs_in_a_reservation_of_its_own_released_when_it_stops(tp2):
    """Run last: stops the module's workers."""
    groups = [ray.get(tp2.pool.handle(n).reservation.remote()) for n in tp2.pool.names()]
    table = placement_group_table()
    assert len(set(groups)) == 2 and all(table[g]["state"] == "CREATED" for g in groups)
    assert all(table[g]["bundles"] == {0: {"CPU": 1.0}} for g in groups)
    runtime.shutdown_actors(tp2_config(), coordinator=False)
    table = placement_group_table()
    assert all(table[g]["state"] == "REMOVED" for g in groups), [table[g]["state"] for g in groups]
