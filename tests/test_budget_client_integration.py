"""The driver's budget client against a real coordinator actor (a private one, not the session's):
calls whose answer the driver knows are sent without waiting (closing a job too), yet the
coordinator sees them in order, and a coordinator killed with such calls in flight charges every
token once."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest
from polling import until

from orchestrator.budget import JobBudget
from orchestrator.engine_client import RayBudgetClient


@pytest.fixture
def coordinator(ray_cluster):
    from orchestrator.coordinator import Coordinator

    handle = Coordinator.remote(8)
    yield handle
    ray_cluster.kill(handle)


async def test_a_settle_sent_unanswered_is_seen_before_the_next_admission(coordinator):
    client = RayBudgetClient(coordinator)
    await client.open_job("j", JobBudget(max_total_tokens=100, min_thread_tokens=16))
    await client.lease("j", "n0", 0, 64)
    assert await client.settle("j", "n0", 90) == ""  # answered by the driver's copy
    adm = await client.admit_fork("j", 2, 1)  # the coordinator has the 90 tokens by now
    assert not adm.admitted and adm.reason == "10 tokens left: too few for 2 threads"
    await client.lease("j", "n1", 0, 64)
    assert await client.settle("j", "n1", 10) == "token budget exhausted (100/100)"
    usage = await client.close_job("j")
    assert usage["tokens"] == 100 and usage["per_thread"] == {"n0": 90, "n1": 10}
    assert usage["exhausted"] == "token budget exhausted (100/100)"
    await until(lambda: _empty(coordinator), 30, "the job closed in the coordinator's ledger")


async def test_calls_sent_to_a_killed_coordinator_charge_once_and_free_their_slots(coordinator):
    client = RayBudgetClient(coordinator)
    await client.open_job("j", JobBudget(max_total_tokens=1000))
    assert (await client.admit_fork("j", 3, 1)).admitted
    await client.start_threads("j", 3)
    for i in range(3):
        await client.lease("j", f"n{i}", 0, 64)
    os.kill(await coordinator.pid.remote(), signal.SIGKILL)
    for i in range(3):  # sent to the dead coordinator: Ray retries them on the new one
        await client.settle("j", f"n{i}", 20 + i)
        await client.end_thread("j")
    usage = await client.close_job("j")
    assert usage["tokens"] == 63 and usage["per_thread"] == {"n0": 20, "n1": 21, "n2": 22}
    await until(lambda: _empty(coordinator), 30, "an empty ledger")


async def _empty(coordinator) -> bool:
    view = await coordinator.cluster.remote()
    return view["jobs"] == 0 and view["threads_in_flight"] == 0


async def test_many_calls_made_at_once_go_out_together_and_all_land(coordinator):
    client = RayBudgetClient(coordinator)
    await client.open_job("j", JobBudget(max_total_tokens=360, min_thread_tokens=16))
    for i in range(50):  # answered at once: the event loop does not run in between
        assert (await client.lease("j", f"n{i}", 0, 7)).tokens == 7
    assert len(client.outbox) == 51  # so they go out as one batch, the job's opening first
    await asyncio.gather(*(client.settle("j", f"n{i}", 7) for i in range(50)))
    adm = await client.admit_fork("j", 1, 1)  # the coordinator's own count: every settle landed
    assert not adm.admitted and adm.reason == "10 tokens left: too few for 1 threads"
    usage = await client.close_job("j")
    assert usage["tokens"] == 350 and len(usage["per_thread"]) == 50
    await until(lambda: _empty(coordinator), 30, "the job closed in the coordinator's ledger")
