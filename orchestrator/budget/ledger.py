"""The cluster's ledger: every open job's account and the cluster-wide count of threads in
flight. The coordinator actor wraps one.
"""
from __future__ import annotations

from dataclasses import asdict

from orchestrator.budget.account import JobUsage
from orchestrator.budget.calls import BudgetCall
from orchestrator.budget.policy import Admission, BudgetError, JobBudget, Lease

EXPIRY_GRACE_S = 60.0  # an account this long past its job's deadline belongs to a dead driver


class Ledger:
    def __init__(self, max_threads_in_flight: int = 64):
        if max_threads_in_flight <= 0:
            raise BudgetError("max_threads_in_flight must be > 0")
        self.max_threads_in_flight = max_threads_in_flight
        self.jobs: dict[str, JobUsage] = {}

    @property
    def in_flight(self) -> int:
        return sum(j.in_flight for j in self.jobs.values())

    def open_job(self, job_id: str, budget: JobBudget, now: float) -> None:
        self.jobs.setdefault(job_id, JobUsage(budget, now))

    def expire(self, now: float, grace_s: float = EXPIRY_GRACE_S) -> list[str]:
        """Drops the accounts of jobs ``grace_s`` past their deadline, and their threads with them:
        no driver runs a job past its deadline, so such an account is one whose driver died
        before closing it (else its threads would hold the cluster's slots for good). Returns
        the jobs dropped."""
        gone = [j for j, u in self.jobs.items() if now - u.opened_at > u.budget.deadline_s + grace_s]
        for job_id in gone:
            del self.jobs[job_id]
        return gone

    def restore(self, job_id: str, usage: JobUsage) -> None:
        """Takes back a job's account as its driver kept it (a restarted coordinator starts empty)."""
        self.jobs.setdefault(job_id, usage)

    def close_job(self, job_id: str) -> dict:
        usage = self.jobs.pop(job_id, None)
        return self.usage_dict(usage) if usage else {}

    def admit_fork(self, job_id: str, n: int, depth: int, now: float) -> Admission:
        """JobUsage.admit on the job's account, with the cluster's free thread slots."""
        return self._job(job_id).admit(n, depth, now, self.max_threads_in_flight - self.in_flight)

    def start_threads(self, job_id: str, k: int) -> None:
        self._job(job_id).count_threads(k)

    def end_thread(self, job_id: str) -> None:
        self._job(job_id).count_threads(-1)

    def lease(self, job_id: str, node: str, used: int, want: int, now: float) -> Lease:
        """JobUsage.lease on the job's account."""
        return self._job(job_id).lease(node, used, want, now)

    def settle(self, job_id: str, node: str, used: int, now: float) -> str:
        """JobUsage.settle on the job's account."""
        return self._job(job_id).settle(node, used, now)

    def apply(self, calls: list[BudgetCall]) -> list[str]:
        """A driver's calls, in its order (each already answered by its copy of the account): per
        call "" or why it was not applied (the ledger does not know the job: restarted)."""
        errors = []
        for call in calls:
            if call.kind == "open_job":
                self.open_job(call.job_id, call.budget, call.now)
            elif call.kind == "close_job":  # a job this ledger does not know has nothing to close
                self.close_job(call.job_id)
            elif call.job_id in self.jobs:
                self.jobs[call.job_id].apply(call)
            else:
                errors.append(f"job {call.job_id!r} is not open in the ledger")
                continue
            errors.append("")
        return errors

    def remaining(self, job_id: str) -> int:
        return self._job(job_id).remaining

    def usage(self, job_id: str) -> dict:
        return self.usage_dict(self._job(job_id))

    def cluster(self) -> dict:
        return {"jobs": len(self.jobs), "threads_in_flight": self.in_flight,
                "max_threads_in_flight": self.max_threads_in_flight}

    @staticmethod
    def usage_dict(u: JobUsage) -> dict:
        return {"tokens": u.tokens, "forks": u.forks, "per_thread": dict(u.per_thread),
                "exhausted": u.exhausted, "budget": asdict(u.budget)}

    def _job(self, job_id: str) -> JobUsage:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise BudgetError(f"job {job_id!r} is not open in the ledger") from None
