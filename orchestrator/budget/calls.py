"""The calls a driver sends the coordinator's ledger, in its order.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.budget.policy import JobBudget


@dataclass(frozen=True)
class BudgetCall:
    """A call on a job's account that its driver has answered from its own copy, sent for the
    coordinator's ledger to apply in the same order. ``seq`` numbers the job's calls (0 for
    ``open_job``): one the account already holds is skipped."""

    job_id: str
    seq: int
    kind: str  # "open_job", "lease", "settle", "threads" (started: > 0, one ended: -1), "fork" or "close_job"
    now: float
    node: str = ""
    used: int = 0
    want: int = 0
    threads: int = 0
    budget: JobBudget | None = None  # open_job


@dataclass(frozen=True)
class Applied:
    """The coordinator's answer to a batch of calls: per call "" or why it was not applied, and
    the cluster's threads in flight once it was (a driver's view for admitting forks itself)."""

    errors: list[str]
    threads_in_flight: int
    max_threads_in_flight: int
