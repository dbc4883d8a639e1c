"""The coordinator: one Ray actor holding the cluster's ledger, rebuilt after a restart.

Every job's account is mirrored here, and the cluster-wide count of threads in flight across all
ingress replicas and drivers is kept here. Drivers answer their own jobs' calls and send them
here in order (``apply``, budget/replica.py); a driver without a recent count of the cluster's
threads asks here to admit a fork (``admit_fork``). The policy lives in ``account``.
"""
from __future__ import annotations

import logging
import os
import time

import ray

from orchestrator.budget.account import JobAccount
from orchestrator.budget.calls import Applied, BudgetCall
from orchestrator.budget.ledger import Ledger
from orchestrator.budget.policy import Admission, JobUsage

log = logging.getLogger(__name__)

COORDINATOR_NAME = "loom-coordinator"
NAMESPACE = "loom"


# Restarted by Ray when it dies; calls in flight are retried on the new one, which starts with an
# empty ledger: every driver gives back its jobs' accounts (ReplicatedBudget) on its next call.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Coordinator:
    def __init__(self, max_threads_in_flight: int = 64):
        self.ledger = Ledger(max_threads_in_flight)
        self.calls = 0  # admit_fork and apply calls answered (bench.cluster counts them per second)

    def restore(self, accounts: dict[str, JobAccount]) -> None:
        for job_id, usage in accounts.items():
            self.ledger.restore(job_id, usage)

    def admit_fork(self, job_id: str, n: int, depth: int, now: float) -> Admission:
        self.calls += 1
        self._expire()
        return self.ledger.admit_fork(job_id, n, depth, now)

    def apply(self, calls: list[BudgetCall]) -> Applied:
        self.calls += 1
        self._expire()
        errors = self.ledger.apply(calls)
        return Applied(errors, self.ledger.in_flight, self.ledger.max_threads_in_flight)

    def cluster(self) -> dict:
        return {**self.ledger.cluster(), "calls": self.calls}

    def usage(self, job_id: str) -> JobUsage:
        """A job's account as this ledger has it (raises BudgetError for a job it does not know)."""
        return self.ledger.usage(job_id)

    def pid(self) -> int:
        return os.getpid()

    def _expire(self) -> None:
        for job_id in self.ledger.expire(time.time()):
            log.warning("dropped the budget account of job %s: past its deadline, never closed "
                        "(its driver died)", job_id)


def get_or_create(max_threads_in_flight: int = 64, resources: dict | None = None):
    """The named, detached coordinator shared by every replica and driver, on a node that has
    ``resources`` (Ray custom resources; None: wherever Ray puts it)."""
    return Coordinator.options(name=COORDINATOR_NAME, namespace=NAMESPACE, lifetime="detached",
                               get_if_exists=True, resources=resources or None).remote(max_threads_in_flight)
