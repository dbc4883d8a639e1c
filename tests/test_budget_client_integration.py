"""The driver's budget client against a real coordinator actor (a private one, not the session's):
calls whose answer the driver knows are sent without waiting (closing a job too), yet the
coordinator sees them in order; a fork is admitted by the driver while its count of the cluster's
threads is recent and by the coordinator otherwise; and a coordinator killed with calls in
flight charges every token once."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest
from polling import until

from orchestrator.budget.policy import Admission, JobBudget
from orchestrator.budget.replica import ReplicatedBudget


@pytest.fixture
def coordinator(ray_cluster):
    from orchestrator.budget.coordinator import Coordinator

    handle = Coordinator.remote(8)
    yield handle
    ray_cluster.kill(handle)


async def test_a_settle_sent_unanswered_is_seen_before_the_next_admission(coordinator):
    client = ReplicatedBudget(coordinator, view_max_age_s=0)  # every admission asks the coordinator
    await client.open_job("j", JobBudget(max_total_tokens=100, min_thread_tokens=16))
    await client.lease("j", "n0", 0, 64)
    assert await client.settle("j", "n0", 90) == ""  # answered by the driver's copy
    adm = await client.admit_fork("j", 2, 1)  # the coordinator has the 90 tokens by now
    assert not adm.admitted and adm.reason == "10 tokens left: too few for 2 threads"
    await client.lease("j", "n1", 0, 64)
    assert await client.settle("j", "n1", 10) == "token budget exhausted (100/100)"
    usage = await client.close_job("j")
    assert usage.tokens == 100 and usage.per_thread == {"n0": 90, "n1": 10}
    assert usage.exhausted == "token budget exhausted (100/100)"
    await until(lambda: _empty(coordinator), 30, "the job closed in the coordinator's ledger")


async def test_calls_sent_to_a_killed_coordinator_charge_once_and_free_their_slots(coordinator):
    client = ReplicatedBudget(coordinator)
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
    assert usage.tokens == 63 and usage.per_thread == {"n0": 20, "n1": 21, "n2": 22}
    await until(lambda: _empty(coordinator), 30, "an empty ledger")


async def _empty(coordinator) -> bool:
    view = await coordinator.cluster.remote()
    return view["jobs"] == 0 and view["threads_in_flight"] == 0


async def test_many_calls_made_at_once_go_out_together_and_all_land(coordinator):
    client = ReplicatedBudget(coordinator, view_max_age_s=0)
    calls_before = (await coordinator.cluster.remote())["calls"]
    await client.open_job("j", JobBudget(max_total_tokens=360, min_thread_tokens=16))
    for i in range(50):  # answered at once: the event loop does not run in between
        assert (await client.lease("j", f"n{i}", 0, 7)).tokens == 7
    assert len(client.outbox) == 51  # so they go out as one batch, the job's opening first
    await asyncio.gather(*(client.settle("j", f"n{i}", 7) for i in range(50)))
    adm = await client.admit_fork("j", 1, 1)  # the coordinator's own count: every settle landed
    assert not adm.admitted and adm.reason == "10 tokens left: too few for 1 threads"
    usage = await client.close_job("j")
    assert usage.tokens == 350 and len(usage.per_thread) == 50
    await until(lambda: _empty(coordinator), 30, "the job closed in the coordinator's ledger")
    calls = (await coordinator.cluster.remote())["calls"] - calls_before
    assert 2 <= calls < 101  # batched: far fewer Ray calls than the 101 budget calls made


async def test_calls_made_over_several_passes_of_the_loop_within_the_window_go_out_as_one(coordinator):
    client = ReplicatedBudget(coordinator, view_max_age_s=0, flush_s=60)  # nothing goes before drain
    calls_before = (await coordinator.cluster.remote())["calls"]
    await client.open_job("j", JobBudget(max_total_tokens=100))
    for i in range(5):
        await client.lease("j", f"n{i}", 0, 7)
        await asyncio.sleep(0.01)  # the event loop runs in between
    await client.close_job("j")
    await client.drain()
    assert (await coordinator.cluster.remote())["calls"] - calls_before == 1
    await until(lambda: _empty(coordinator), 30, "the job closed in the coordinator's ledger")


async def test_a_driver_admits_forks_with_its_recent_view_of_other_drivers_threads(coordinator):
    """Driver b learns that a has 6 of the 8 slots, and narrows its fork to 2 itself even after
    a's threads ended (its view is recent, and b does not ask); a driver that asks gets 4. The
    coordinator counts the fork b admitted."""
    # b trusts its view for a minute here (1 s by default), so that a slow machine cannot age it
    a, b, asking = ReplicatedBudget(coordinator), ReplicatedBudget(coordinator, 60), ReplicatedBudget(coordinator, 0)
    await a.open_job("a", JobBudget())
    await a.start_threads("a", 6)
    await a.drain()
    await b.open_job("b", JobBudget(max_total_tokens=1000))
    await b.drain()
    assert (b.view.others, b.view.max_threads) == (6, 8)
    for _ in range(6):
        await a.end_thread("a")
    await a.drain()
    assert await b.admit_fork("b", 4, 1) == Admission(2, 250, "narrowed to 2 of 4 (waves)")
    await asking.open_job("c", JobBudget())
    assert (await asking.admit_fork("c", 4, 1)).width == 4  # the coordinator's count: a's threads ended
    await b.drain()
    assert (await coordinator.usage.remote("b")).forks == 1 == (await b.close_job("b")).forks
    for client, job in ((a, "a"), (asking, "c")):
        await client.close_job(job)
    await until(lambda: _empty(coordinator), 30, "every job closed in the coordinator's ledger")
