"""The coordinator: one Ray actor holding the cluster's budget ledger (rebuilt after a restart).

Every job opens an account here; forks are admitted, tokens leased and charged, and threads counted
through it, so the cluster-wide cap on threads in flight holds across all replicas of the
ingress. The policy itself lives in ``orchestrator.budget.Ledger`` (plain, unit-tested).
"""
from __future__ import annotations

import os

import ray

from orchestrator.budget import Admission, JobBudget, JobUsage, Lease, Ledger

COORDINATOR_NAME = "loom-coordinator"
NAMESPACE = "loom"


# Restarted by Ray when it dies; calls in flight are retried on the new one, which starts with an
# empty ledger: every driver gives back its jobs' accounts (RayBudgetClient) on its next call.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Coordinator:
    def __init__(self, max_threads_in_flight: int = 64):
        self.ledger = Ledger(max_threads_in_flight)

    def open_job(self, job_id: str, budget: JobBudget, now: float) -> None:
        self.ledger.open_job(job_id, budget, now)

    def close_job(self, job_id: str) -> dict:
        return self.ledger.close_job(job_id)

    def restore(self, accounts: dict[str, JobUsage]) -> None:
        for job_id, usage in accounts.items():
            self.ledger.restore(job_id, usage)

    def admit_fork(self, job_id: str, n: int, depth: int, now: float) -> Admission:
        return self.ledger.admit_fork(job_id, n, depth, now)

    def start_threads(self, job_id: str, k: int) -> None:
        self.ledger.start_threads(job_id, k)

    def end_thread(self, job_id: str) -> None:
        self.ledger.end_thread(job_id)

    def lease(self, job_id: str, node: str, used: int, want: int, now: float, report: int = 0) -> Lease:
        return self.ledger.lease(job_id, node, used, want, now, report)

    def settle(self, job_id: str, node: str, used: int, now: float, report: int = 0) -> str:
        return self.ledger.settle(job_id, node, used, now, report)

    def cluster(self) -> dict:
        return self.ledger.cluster()

    def pid(self) -> int:
        return os.getpid()


def get_or_create(max_threads_in_flight: int = 64):
    """The named, detached coordinator shared by every replica and driver."""
    return Coordinator.options(name=COORDINATOR_NAME, namespace=NAMESPACE, lifetime="detached",
                               get_if_exists=True).remote(max_threads_in_flight)
