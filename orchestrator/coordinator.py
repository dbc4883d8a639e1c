"""The coordinator: one Ray actor holding the cluster's budget ledger (rebuilt after a restart).

Every job opens an account here and forks are admitted through it, so the cluster-wide cap on
threads in flight holds across all replicas of the ingress. Tokens are leased and charged, and
threads counted, by each job's driver on its own exact copy of the account; the driver sends each
such call here too, in order, and this ledger comes to the same answers (RayBudgetClient). The
policy itself lives in ``orchestrator.budget`` (plain, unit-tested).
"""
from __future__ import annotations

import os

import ray

from orchestrator.budget import Admission, BudgetCall, JobUsage, Ledger

COORDINATOR_NAME = "loom-coordinator"
NAMESPACE = "loom"


# Restarted by Ray when it dies; calls in flight are retried on the new one, which starts with an
# empty ledger: every driver gives back its jobs' accounts (RayBudgetClient) on its next call.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Coordinator:
    def __init__(self, max_threads_in_flight: int = 64):
        self.ledger = Ledger(max_threads_in_flight)

    def restore(self, accounts: dict[str, JobUsage]) -> None:
        for job_id, usage in accounts.items():
            self.ledger.restore(job_id, usage)

    def admit_fork(self, job_id: str, n: int, depth: int, now: float) -> Admission:
        return self.ledger.admit_fork(job_id, n, depth, now)

    def apply(self, calls: list[BudgetCall]) -> list[str]:
        return self.ledger.apply(calls)

    def cluster(self) -> dict:
        return self.ledger.cluster()

    def pid(self) -> int:
        return os.getpid()


def get_or_create(max_threads_in_flight: int = 64):
    """The named, detached coordinator shared by every replica and driver."""
    return Coordinator.options(name=COORDINATOR_NAME, namespace=NAMESPACE, lifetime="detached",
                               get_if_exists=True).remote(max_threads_in_flight)
