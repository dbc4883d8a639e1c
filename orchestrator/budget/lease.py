"""A thread's token lease: where a request's streamed tokens are charged.

The job driver opens a lease per segment and passes it to the engine client, which spends each
streamed chunk's tokens against it (``spend``). Tokens are reserved ``size`` at a time, and the
budget is called only when the lease runs low (the next grant is asked for in the background once
fewer than ``low`` are left) or when the request ends (``settle``), instead of on every few
tokens. The first grant is asked for before the request is sent; ``ReplicatedBudget`` answers it
from the driver's copy of the account, so that costs no round trip. The stream waits only when a
chunk takes it past what was granted; a refused grant stops the thread (``BudgetExhausted``), and
the tokens streamed stay charged, exactly, when the lease is settled.

A lease whose first grant covers all a request may stream (``covers``) can never overshoot, so the
request need not stream as it goes (``GenRequest.quiet``); the engine client then stops it at the
job's deadline itself (``seconds_left``, raising ``DeadlineReached``), since no renewal comes to
see the deadline pass.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Self

from orchestrator.budget.ops import BudgetOps
from orchestrator.protocol.segment import DeadlineReached

LEASE_TOKENS = 64  # asked for at a time
LEASE_LOW = 24  # the next grant is asked for once fewer than this are left
DEADLINE_SLACK_S = 0.005


class BudgetExhausted(Exception):
    """The job's token budget or deadline ran out while a request streamed."""


class TokenLease:
    def __init__(self, budget: BudgetOps, job_id: str, node: str, size: int = LEASE_TOKENS,
                 low: int = LEASE_LOW, first: int | None = None):
        self.budget = budget
        self.job_id = job_id
        self.node = node
        self.size = size
        self.first = first or size  # the first grant asked for
        self.low = low
        self.granted = 0  # tokens it may stream in all (used and reported + its grant)
        self.used = 0  # tokens streamed so far
        self.reported = 0  # of which the budget has been told
        self.stop = ""
        self.dry = False  # the last grant asked ahead was refused: ask again only when needed
        self.covered = False  # the grant holds all the request may stream: it never asks again
        self.until = float("inf")  # the job's deadline (epoch seconds), from the last grant
        self.verdict: str | None = None  # settle's answer, once settled
        self._next: asyncio.Task | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        """Settles the lease however the request ended. BudgetExhausted if it ended well but the
        job must stop (its last token, or its deadline), or if the engine client stopped it at the
        deadline."""
        if exc_type is None:
            if stop := await self.settle():
                raise BudgetExhausted(stop)
            return
        verdict = await asyncio.shield(self.settle())
        if issubclass(exc_type, DeadlineReached):
            raise BudgetExhausted(verdict) from None

    async def start(self) -> None:
        """The first grant, before the request is sent."""
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
        """The request has ended: what it used is charged, the rest of its grant given back.
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
        limit = upto + grant.tokens  # tokens streamed past the last grant are charged, not granted
        self.reported, self.stop = upto, grant.stop
        self.granted = min(self.granted, limit) if grant.stop else limit
