"""The budget operations on a ``Ledger`` in this process (one driver, no coordinator actor).
"""
from __future__ import annotations

import time

from orchestrator.budget.ledger import Ledger
from orchestrator.budget.policy import Admission, JobBudget, Lease


class LocalBudgetClient:
    """A ``Ledger`` in this process behind ``BudgetClient`` (one driver, no coordinator actor)."""

    def __init__(self, ledger: Ledger, clock=time.time):
        self.ledger = ledger
        self.clock = clock

    async def open_job(self, job_id: str, budget: JobBudget) -> None:
        self.ledger.open_job(job_id, budget, self.clock())

    async def close_job(self, job_id: str) -> dict:
        return self.ledger.close_job(job_id)

    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission:
        return self.ledger.admit_fork(job_id, n, depth, self.clock())

    async def start_threads(self, job_id: str, k: int) -> None:
        self.ledger.start_threads(job_id, k)

    async def end_thread(self, job_id: str) -> None:
        self.ledger.end_thread(job_id)

    async def lease(self, job_id: str, node: str, used: int, want: int) -> Lease:
        return self.ledger.lease(job_id, node, used, want, self.clock())

    async def settle(self, job_id: str, node: str, used: int) -> str:
        return self.ledger.settle(job_id, node, used, self.clock())

    async def drain(self) -> None:
        """Nothing is ever in flight to an in-process ledger."""
