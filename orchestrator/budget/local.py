"""The budget operations on a ``Ledger`` in this process (one driver, no coordinator actor)."""
from __future__ import annotations

import time

from orchestrator.budget.ledger import Ledger
from orchestrator.budget.policy import Admission, Grant, JobBudget, JobUsage


class LocalBudget:
    def __init__(self, ledger: Ledger, clock=time.time):
        self.ledger = ledger
        self.clock = clock

    async def open_job(self, job_id: str, budget: JobBudget) -> None:
        self.ledger.open_job(job_id, budget, self.clock())

    async def close_job(self, job_id: str) -> JobUsage:
        return self.ledger.close_job(job_id)

    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission:
        return self.ledger.admit_fork(job_id, n, depth, self.clock())

    async def start_threads(self, job_id: str, k: int) -> None:
        self.ledger.account(job_id).count_threads(k)

    async def end_thread(self, job_id: str) -> None:
        self.ledger.account(job_id).count_threads(-1)

    async def lease(self, job_id: str, node: str, used: int, want: int) -> Grant:
        return self.ledger.account(job_id).lease(node, used, want, self.clock())

    async def settle(self, job_id: str, node: str, used: int) -> str:
        return self.ledger.account(job_id).settle(node, used, self.clock())

    async def drain(self) -> None:
        """Nothing is ever in flight to an in-process ledger."""
