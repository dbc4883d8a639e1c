"""A thread's token lease (orchestrator/budget/lease.py) over a real Ledger: few budget calls per
thread, exact usage, and a job's total held across threads that stream at once."""
from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.budget.lease import LEASE_TOKENS, BudgetExhausted, TokenLease
from orchestrator.budget.ledger import Ledger
from orchestrator.budget.local import LocalBudget
from orchestrator.budget.policy import JobBudget


class CountingBudget(LocalBudget):
    """The in-process budget, counting the round trips a coordinator would get."""

    def __init__(self, ledger: Ledger):
        super().__init__(ledger)
        self.calls = 0

    async def lease(self, *args):
        self.calls += 1
        await asyncio.sleep(0)  # a round trip: the stream may move on meanwhile
        return await super().lease(*args)

    async def settle(self, *args):
        self.calls += 1
        return await super().settle(*args)


def budget(**b) -> CountingBudget:
    led = Ledger()
    led.open_job("j", JobBudget(**b), time.time())
    return CountingBudget(led)


async def stream(lease: TokenLease, tokens: int, chunk: int = 4) -> int:
    """Spends ``tokens`` in chunks as a stream would; returns how many were streamed."""
    await lease.start()
    sent = 0
    try:
        while sent < tokens:
            n = min(chunk, tokens - sent)
            sent += n
            await lease.spend(n)
    finally:
        await lease.settle()
    return sent


async def test_a_thread_calls_the_budget_once_per_lease_and_is_charged_exactly():
    b = budget(max_total_tokens=10_000)
    await stream(TokenLease(b, "j", "n1"), 300)
    usage = b.ledger.usage("j")
    assert usage.tokens == 300 and usage.per_thread == {"n1": 300}
    assert b.ledger.jobs["j"].leased == {}  # nothing left reserved
    assert b.calls <= 300 // LEASE_TOKENS + 3  # leases (one asked ahead) and the settle; charging every 8 tokens took 38


@pytest.mark.parametrize("chunk", [1, 4, 17])
async def test_threads_streaming_at_once_stop_at_the_total_and_overshoot_by_less_than_a_chunk(chunk):
    b = budget(max_total_tokens=150)
    leases = [TokenLease(b, "j", f"n{i}") for i in range(3)]
    results = await asyncio.gather(*(stream(lease, 400, chunk) for lease in leases), return_exceptions=True)
    assert all(isinstance(r, BudgetExhausted) for r in results)
    used = b.ledger.usage("j").tokens
    assert sum(lease.used for lease in leases) == used  # every streamed token charged once
    assert 150 - LEASE_TOKENS < used <= 150 + 3 * chunk, used


async def test_a_thread_of_a_job_with_no_tokens_left_stops_at_its_first_chunk():
    b = budget(max_total_tokens=64)
    await stream(TokenLease(b, "j", "n1"), 64)
    with pytest.raises(BudgetExhausted, match="token budget exhausted"):
        await stream(TokenLease(b, "j", "n2"), 10)
    assert b.ledger.usage("j").per_thread == {"n1": 64, "n2": 4}


async def test_as_a_context_it_settles_however_the_request_ends():
    b = budget(max_total_tokens=64)
    with pytest.raises(BudgetExhausted, match="token budget exhausted"):  # ended well, on the last token
        async with TokenLease(b, "j", "n1") as lease:
            await lease.spend(64)
    assert b.ledger.usage("j").per_thread == {"n1": 64} and b.ledger.jobs["j"].leased == {}
    b = budget(max_total_tokens=1000)
    with pytest.raises(RuntimeError, match="fell over"):
        async with TokenLease(b, "j", "n1") as lease:
            await lease.spend(10)
            raise RuntimeError("engine fell over")
    assert b.ledger.usage("j").tokens == 10 and b.ledger.jobs["j"].leased == {}


async def test_a_first_lease_that_covers_the_request_is_its_only_one():
    b = budget(max_total_tokens=1000, deadline_s=10)
    async with TokenLease(b, "j", "n1", first=300) as lease:
        assert lease.covers(300)
        assert 9.9 < lease.seconds_left() < 10.1
        for _ in range(75):
            await lease.spend(4)
    assert b.calls == 2  # the lease and the settle
    assert b.ledger.usage("j").tokens == 300 and b.ledger.jobs["j"].leased == {}


async def test_a_first_lease_covers_a_request_only_within_its_share_of_what_is_left():
    b = budget(max_total_tokens=500)
    b.ledger.account("j").count_threads(2)
    one, two = TokenLease(b, "j", "n1", first=300), TokenLease(b, "j", "n2", first=300)
    await one.start()
    await two.start()
    assert one.covers(250) and not two.covers(300)  # 250 of 500 each, then 125 of 250
    assert (one.granted, two.granted) == (250, 125)


async def test_tokens_charged_after_the_stream_are_settled_once_with_the_rest():
    b = budget(max_total_tokens=1000)
    with pytest.raises(asyncio.CancelledError):
        async with TokenLease(b, "j", "n1", first=500) as lease:
            await lease.spend(1)
            lease.charge(40)  # made by the engine, never streamed (a quiet request cancelled)
            assert await lease.settle() == ""
            raise asyncio.CancelledError
    assert b.ledger.usage("j").tokens == 41 and b.calls == 2
