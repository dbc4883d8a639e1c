"""The driver's replicated accounts: the budget operations answered from the driver's own exact
copy of each of its jobs' accounts, and sent to the coordinator actor without waiting.

Only one driver spends a job's tokens, so its copy of the job's account is exact: leases,
settles, thread counts and the close are answered here with the account's own policy, numbered
(``BudgetCall.seq``) and posted; the calls posted within ``flush_s`` of the first go to the
coordinator as one batch (one Ray call: at concurrency 32 the replica spent 14% of its CPU
sending a batch per pass of its event loop). Ray runs one caller's calls to an actor in the
order they were sent, so the coordinator's ledger applies the same calls in the same order and comes to the same
answers. No streamed token waits on the coordinator.

A fork's admission needs the cluster's threads in flight, other drivers' too. Each batch's
answer carries the coordinator's count once it applied the batch (``Applied``); less this
driver's own threads as of that batch, it is the other drivers' (``ClusterView``). While that
view is at most ``view_max_age_s`` old, a fork is admitted here and the admission sent as a
``CountFork`` call; otherwise the coordinator is asked (after what was posted). NOTE: with
several drivers, a fork may miss another driver's threads started within the last round trip,
so the cluster's cap on threads is soft by that much.

When the coordinator has restarted and no longer knows a job, the driver gives all its open
accounts back (``restore``), and a call Ray retries after that is skipped by its number.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from orchestrator.budget.account import JobAccount
from orchestrator.budget.calls import (
    AccountCall,
    Applied,
    BudgetCall,
    CloseJob,
    CountFork,
    CountThreads,
    GrantLease,
    OpenJob,
    Settle,
)
from orchestrator.budget.policy import Admission, BudgetError, Grant, JobBudget, JobUsage

log = logging.getLogger(__name__)

VIEW_MAX_AGE_S = 1.0  # a driver admits forks itself with a count of the cluster's threads at most this old
FLUSH_S = 0.05  # budget calls posted within this long go to the coordinator in one Ray call


@dataclass(frozen=True)
class ClusterView:
    """The cluster's threads as a driver last heard them from the coordinator."""

    others: int  # other drivers' threads in flight
    max_threads: int  # the cluster's cap (max_threads_in_flight)
    at: float  # when the batch whose answer said so was sent (time.monotonic)


class ReplicatedBudget:
    def __init__(self, coordinator, view_max_age_s: float = VIEW_MAX_AGE_S, flush_s: float = FLUSH_S):
        self.coordinator = coordinator  # the coordinator actor's handle
        self.view_max_age_s = view_max_age_s
        self.flush_s = flush_s
        self.accounts: dict[str, JobAccount] = {}
        self.outbox: list[BudgetCall] = []  # posted, not yet sent
        self.sent: set[asyncio.Task] = set()  # batches sent, not yet applied
        self.view: ClusterView | None = None

    async def open_job(self, job_id: str, budget: JobBudget) -> None:
        now = time.time()
        self.accounts[job_id] = JobAccount(budget, now)
        self._post(OpenJob(job_id, 0, now, budget))

    async def close_job(self, job_id: str) -> JobUsage:
        """The job's usage, from our exact copy of its account; the close is posted, not waited
        for."""
        account = self.accounts.pop(job_id)
        self._post(CloseJob(job_id, account.calls + 1, time.time()))
        return account.usage()

    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission:
        view = self.view
        if view is not None and time.monotonic() - view.at <= self.view_max_age_s:
            free = view.max_threads - view.others - self._threads()
            adm = self.accounts[job_id].admission(n, depth, time.time(), free)
            if adm.admitted:
                self._mirror(job_id, CountFork)
            return adm
        return await self._ask_admission(job_id, n, depth)

    async def start_threads(self, job_id: str, k: int) -> None:
        self._mirror(job_id, CountThreads, delta=k)

    async def end_thread(self, job_id: str) -> None:
        self._mirror(job_id, CountThreads, delta=-1)

    async def lease(self, job_id: str, node: str, used: int, want: int) -> Grant:
        return self._mirror(job_id, GrantLease, node=node, used=used, want=want)

    async def settle(self, job_id: str, node: str, used: int) -> str:
        return self._mirror(job_id, Settle, node=node, used=used)

    async def drain(self) -> None:
        """Returns once every call posted so far has been applied by the coordinator (or failed)."""
        self._flush()
        await asyncio.gather(*self.sent, return_exceptions=True)

    async def _ask_admission(self, job_id: str, n: int, depth: int) -> Admission:
        """The coordinator admits the fork (after what was posted), and our copy counts it."""
        self._flush()
        now = time.time()
        try:
            adm = await self.coordinator.admit_fork.remote(job_id, n, depth, now)
        except BudgetError as e:  # raised in the coordinator: it does not know the job
            if job_id not in self.accounts or "is not open" not in str(e):
                raise
            await self._restore()
            adm = await self.coordinator.admit_fork.remote(job_id, n, depth, now)
        if adm.admitted:
            self.accounts[job_id].count_fork()
        return adm

    def _mirror(self, job_id: str, kind: type[AccountCall], **fields):
        """The call applied to our copy of the account (its answer returned), then posted."""
        account = self.accounts[job_id]
        call = kind(job_id, account.calls + 1, time.time(), **fields)
        answer = account.apply(call)
        self._post(call)
        return answer

    def _post(self, call: BudgetCall) -> None:
        self.outbox.append(call)
        if len(self.outbox) == 1:
            asyncio.get_running_loop().call_later(self.flush_s, self._flush)

    def _threads(self) -> int:
        """Our jobs' threads in flight."""
        return sum(a.in_flight for a in self.accounts.values())

    def _flush(self) -> None:
        """Sends what was posted, as one call."""
        calls, self.outbox = self.outbox, []
        if not calls:
            return
        ref = self.coordinator.apply.remote(calls)
        task = asyncio.ensure_future(self._applied(ref, calls, self._threads(), time.monotonic()))
        self.sent.add(task)
        task.add_done_callback(self.sent.discard)

    async def _applied(self, ref, calls: list[BudgetCall], mine: int, at: float) -> None:
        """``mine``: our threads in flight once the coordinator has applied these calls."""
        try:
            applied: Applied = await ref
        except Exception:  # nobody waits on a batch: logged (jobs' usage comes from our copies)
            log.exception("the coordinator did not apply %d budget calls", len(calls))
            return
        if any(applied.errors):  # a restarted coordinator: our accounts already hold these calls
            await self._restore()
        elif self.view is None or self.view.at < at:
            self.view = ClusterView(applied.threads_in_flight - mine, applied.max_threads_in_flight, at)

    async def _restore(self) -> None:
        await self.coordinator.restore.remote(dict(self.accounts))
