"""The cluster's ledger: every open job's account and the cluster-wide count of threads in
flight. The coordinator actor wraps one; a driver without a coordinator uses one directly."""
from __future__ import annotations

from orchestrator.budget.account import JobAccount
from orchestrator.budget.calls import BudgetCall
from orchestrator.budget.policy import Admission, BudgetError, JobBudget, JobUsage

EXPIRY_GRACE_S = 60.0  # an account this long past its job's deadline belongs to a dead driver


class Ledger:
    def __init__(self, max_threads_in_flight: int = 64):
        if max_threads_in_flight <= 0:
            raise BudgetError("max_threads_in_flight must be > 0")
        self.max_threads_in_flight = max_threads_in_flight
        self.jobs: dict[str, JobAccount] = {}

    @property
    def in_flight(self) -> int:
        return sum(j.in_flight for j in self.jobs.values())

    def open_job(self, job_id: str, budget: JobBudget, now: float) -> None:
        self.jobs.setdefault(job_id, JobAccount(budget, now))

    def close_job(self, job_id: str) -> JobUsage | None:
        account = self.jobs.pop(job_id, None)
        return account.usage() if account else None

    def restore(self, job_id: str, account: JobAccount) -> None:
        """Takes back a job's account as its driver kept it (a restarted coordinator starts empty)."""
        self.jobs.setdefault(job_id, account)

    def expire(self, now: float, grace_s: float = EXPIRY_GRACE_S) -> list[str]:
        """Drops the accounts of jobs ``grace_s`` past their deadline, and their threads with them:
        no driver runs a job past its deadline, so such an account is one whose driver died
        before closing it (else its threads would hold the cluster's slots for good). Returns
        the jobs dropped."""
        gone = [j for j, a in self.jobs.items() if now - a.opened_at > a.budget.deadline_s + grace_s]
        for job_id in gone:
            del self.jobs[job_id]
        return gone

    def account(self, job_id: str) -> JobAccount:
        account = self.jobs.get(job_id)
        if account is None:
            raise BudgetError(f"job {job_id!r} is not open in the ledger")
        return account

    def admit_fork(self, job_id: str, n: int, depth: int, now: float) -> Admission:
        """The job's account admits the fork, with the cluster's free thread slots."""
        return self.account(job_id).admit(n, depth, now, self.max_threads_in_flight - self.in_flight)

    def apply(self, calls: list[BudgetCall]) -> list[str]:
        """A driver's calls, in its order (each already answered by its copy of the account): per
        call "" or why it was not applied (the ledger does not know the job: restarted)."""
        return [call.apply_on(self) for call in calls]

    def usage(self, job_id: str) -> JobUsage:
        return self.account(job_id).usage()

    def cluster(self) -> dict:
        return {"jobs": len(self.jobs), "threads_in_flight": self.in_flight,
                "max_threads_in_flight": self.max_threads_in_flight}
