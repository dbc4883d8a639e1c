"""The driver's replicated accounts: leases, settles, thread counts and (with a recent view of
the cluster) fork admissions answered from the driver's own exact copy of each job's
account, and sent to the coordinator in batches, in order.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from orchestrator.budget.account import JobUsage
from orchestrator.budget.calls import Applied, BudgetCall
from orchestrator.budget.ledger import Ledger
from orchestrator.budget.policy import Admission, BudgetError, JobBudget, Lease

log = logging.getLogger(__name__)


VIEW_MAX_AGE_S = 1.0  # a driver admits forks itself with a count of the cluster's threads at most this old


@dataclass(frozen=True)
class ClusterView:
    """The cluster's threads as a driver last heard them from the coordinator."""

    others: int  # other drivers' threads in flight
    max_threads: int  # the cluster's cap (max_threads_in_flight)
    at: float  # when the batch whose answer said so was sent (time.monotonic)


class RayBudgetClient:
    """The coordinator actor (orchestrator/coordinator.py) behind ``BudgetClient``.

    Only one driver spends a job's tokens, so the driver keeps an exact copy of each open job's
    account and answers leases and settles itself, with the ledger's own policy
    (``JobUsage.apply``); those calls, like opening a job and counting its threads, are numbered
    and sent to the coordinator without waiting, the calls of one pass of the event loop as one
    batch. Ray runs one caller's calls to an actor in the order they were sent, so the
    coordinator's ledger applies the same calls in the same order and comes to the same answers.
    Closing a job is such a call too: the job's usage is our copy's, and the coordinator drops
    the account after the job's other calls.

    A fork's admission needs the cluster's threads in flight, other drivers' too. Each batch's
    answer carries the coordinator's count once it applied the batch (``Applied``); less our own
    threads as of that batch, it is the other drivers' (``ClusterView``). While that view is at
    most ``view_max_age_s`` old, a fork is admitted here, with the ledger's own policy
    (``JobUsage.admission``), and the admission sent as one more call; an older view, or none, and
    the coordinator is asked (after what was posted), as every admission once was: that round
    trip took 3.3 ms a fork (median of 17, concurrency 1, this project's 2-core VM). With one
    driver the view is exact; with several, a fork may miss another driver's threads started
    within the last round trip, and the cluster's cap on threads is a little soft by that (it
    already gives every admitted fork at least one thread).

    When the coordinator has restarted and no longer knows a job, the client gives all its open
    accounts back (``restore``): budgets and the cluster-wide thread count survive the restart,
    and a call Ray retries after the restore is skipped by its number."""

    def __init__(self, handle, view_max_age_s: float = VIEW_MAX_AGE_S):
        self.handle = handle
        self.view_max_age_s = view_max_age_s
        self.accounts: dict[str, JobUsage] = {}
        self.outbox: list[BudgetCall] = []  # posted, not yet sent
        self.sent: set[asyncio.Task] = set()  # batches sent, not yet applied
        self.view: ClusterView | None = None

    async def open_job(self, job_id: str, budget: JobBudget) -> None:
        now = time.time()
        self.accounts[job_id] = JobUsage(budget, now)
        self._post(BudgetCall(job_id, 0, "open_job", now, budget=budget))

    async def close_job(self, job_id: str) -> dict:
        """The job's usage, from our exact copy of its account; the close is sent at once (it
        would not wait for the next pass of the event loop), not waited for."""
        account = self.accounts.pop(job_id)
        self._post(BudgetCall(job_id, account.calls + 1, "close_job", time.time()))
        self._flush()
        return Ledger.usage_dict(account)

    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission:
        view = self.view
        if view is not None and time.monotonic() - view.at <= self.view_max_age_s:
            free = view.max_threads - view.others - self._threads()
            adm = self.accounts[job_id].admission(n, depth, time.time(), free)
            if adm.admitted:
                self._mirror(job_id, "fork")
            return adm
        self._flush()  # the coordinator applies what was posted first
        now = time.time()
        try:
            adm = await self.handle.admit_fork.remote(job_id, n, depth, now)
        except BudgetError as e:  # raised in the coordinator: it does not know the job
            if job_id not in self.accounts or "is not open" not in str(e):
                raise
            await self._restore()
            adm = await self.handle.admit_fork.remote(job_id, n, depth, now)
        self.accounts[job_id].forks += adm.admitted
        return adm

    async def start_threads(self, job_id: str, k: int) -> None:
        self._mirror(job_id, "threads", threads=k)

    async def end_thread(self, job_id: str) -> None:
        self._mirror(job_id, "threads", threads=-1)

    async def lease(self, job_id: str, node: str, used: int, want: int) -> Lease:
        return self._mirror(job_id, "lease", node=node, used=used, want=want)

    async def settle(self, job_id: str, node: str, used: int) -> str:
        return self._mirror(job_id, "settle", node=node, used=used)

    def _mirror(self, job_id: str, kind: str, **fields):
        """The call applied to our copy of the account (its answer returned), then posted."""
        account = self.accounts[job_id]
        call = BudgetCall(job_id, account.calls + 1, kind, time.time(), **fields)
        answer = account.apply(call)
        self._post(call)
        return answer

    def _post(self, call: BudgetCall) -> None:
        self.outbox.append(call)
        if len(self.outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self) -> None:
        """Returns once every call posted so far has been applied by the coordinator (or failed)."""
        self._flush()
        await asyncio.gather(*self.sent, return_exceptions=True)

    def _threads(self) -> int:
        """Our jobs' threads in flight."""
        return sum(a.in_flight for a in self.accounts.values())

    def _flush(self) -> None:
        """Sends what was posted, as one call."""
        calls, self.outbox = self.outbox, []
        if not calls:
            return
        ref = self.handle.apply.remote(calls)
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
        await self.handle.restore.remote(dict(self.accounts))
