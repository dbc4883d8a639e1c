"""A thread's token lease: the engine client spends streamed tokens against tokens the budget
reserved for the thread, and calls the budget only when the lease runs low or the thread ends,
instead of on every few tokens (the coordinator is one actor shared by every job).

The first lease is granted before the request is sent (the driver answers leases from its copy
of the job's account, engine_client.RayBudgetClient: no round trip, and so no pass of the event
loop, which with a block's other threads starting cost each request about a millisecond). The
next lease is asked for in the background once fewer than ``low`` tokens are left, so the
stream does not wait on a budget that takes time to answer while there are tokens to spend; it
waits only when a chunk takes it past what it was granted. A refused lease stops the thread (``BudgetExhausted``);
the tokens already streamed stay charged, exactly, when the lease is settled.

A lease whose first grant covers the whole request (``covers``) can never overshoot, so the
request need not stream its tokens as they come (GenRequest.quiet): the engine client then stops
it at the job's deadline itself (``seconds_left``), which no renewal is there to see.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol, Self

from orchestrator.budget.policy import Lease

LEASE_TOKENS = 64  # asked for at a time
LEASE_LOW = 24  # the next lease is asked for once fewer than this are left
DEADLINE_SLACK_S = 0.005


class BudgetExhausted(Exception):
    """The job's token budget or deadline ran out while a request streamed."""


class LeaseSource(Protocol):
    async def lease(self, job_id: str, node: str, used: int, want: int) -> Lease: ...
    async def settle(self, job_id: str, node: str, used: int) -> str: ...


class ThreadLease:
    def __init__(self, budget: LeaseSource, job_id: str, node: str, size: int = LEASE_TOKENS,
                 low: int = LEASE_LOW, first: int | None = None):
        self.budget = budget
        self.job_id = job_id
        self.node = node
        self.size = size
        self.first = first or size  # the first lease asked for
        self.low = low
        self.granted = 0  # tokens it may stream in all (used and reported + its lease)
        self.used = 0  # tokens streamed so far
        self.reported = 0  # of which the budget has been told
        self.stop = ""
        self.dry = False  # the last lease asked ahead was refused: ask again only when needed
        self.covered = False  # the lease holds all the request may stream: it never asks again
        self.until = float("inf")  # the job's deadline (epoch seconds), from the last grant
        self.verdict: str | None = None  # settle's answer, once settled
        self._next: asyncio.Task | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        """Settles the lease however the request ended; BudgetExhausted if it ended well but the
        job must stop (its last token, or its deadline)."""
        if exc_type is not None:
            await asyncio.shield(self.settle())
            return
        if stop := await self.settle():
            raise BudgetExhausted(stop)

    async def start(self) -> None:
        """The first lease, before the request is sent."""
        await self._renew(self.first)

    def covers(self, n: int) -> bool:
        """Whether the first grant covers ``n`` tokens, all a request may stream."""
        self.covered = self.granted >= n
        return self.covered

    def seconds_left(self) -> float:
        """Until just past the job's deadline, as the last grant told it (just past: a timer on
        the event loop's clock may fire a little early by the ledger's)."""
        return max(0.0, self.until - time.time()) + DEADLINE_SLACK_S

    def charge(self, n: int) -> None:
        """``n`` tokens the engine made that never streamed (a quiet request cancelled): settled
        with the rest."""
        self.used += n

    async def spend(self, n: int) -> None:
        """``n`` more tokens streamed; BudgetExhausted once they pass a lease that cannot grow."""
        self.used += n
        if self._next is None and not (self.stop or self.dry or self.covered) and self.granted - self.used < self.low:
            self._next = asyncio.ensure_future(self._renew())
        while self.used > self.granted:
            if self._next is None:
                if self.stop:
                    raise BudgetExhausted(self.stop)
                self._next = asyncio.ensure_future(self._renew())
            await self._collect()

    async def settle(self) -> str:
        """The request has ended: what it used is charged, the rest of its lease given back.
        Returns why the job must stop ("" if it may go on); settled once, later calls repeat it."""
        if self.verdict is not None:
            return self.verdict
        if self._next is not None:
            with contextlib.suppress(Exception):  # its grant is given back right after
                await self._collect()
        self.verdict = await self.budget.settle(self.job_id, self.node, self.used - self.reported)
        self.reported = self.used
        return self.verdict

    async def _collect(self) -> None:
        task, self._next = self._next, None
        await task

    async def _renew(self, want: int | None = None) -> None:
        upto = self.used
        grant = await self.budget.lease(self.job_id, self.node, upto - self.reported, want or self.size)
        self.until = grant.until
        self.dry = grant.tokens <= self.granted - upto  # nothing more: ask again only when needed
        limit = upto + grant.tokens  # tokens streamed past the last lease are charged, not granted
        self.reported, self.stop = upto, grant.stop
        self.granted = min(self.granted, limit) if grant.stop else limit
