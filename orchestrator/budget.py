"""The compute budget: a ledger per job and one for the cluster. Plain Python, no Ray.

The coordinator actor (coordinator.py) wraps one ``Ledger``; every decision is made here so
that the policy is tested deterministically (time is passed in, never read).
- admit_fork: width w <= N from the job's max width and the cluster's free thread slots;
  the N - w others run in later waves, never dropped. A fork past max depth, max fork
  rounds, or without tokens for every thread is refused: the model goes on sequentially.
- lease: a thread decodes on a lease of tokens reserved for it, and comes back only when the
  lease runs low (reporting what it used) or when it ends (``settle``). Tokens used plus tokens
  leased never pass the job's total; once a lease cannot be granted, or the deadline has passed,
  the job is exhausted and the caller cancels what is left.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


class BudgetError(ValueError):
    pass


# Each field's bounds (inclusive): a budget past them is a mistake, never a wish to run forever.
LIMITS: dict[str, tuple[float, float]] = {
    "max_total_tokens": (1, 10_000_000), "max_width": (1, 1024), "max_depth": (1, 32),
    "max_thread_tokens": (1, 10_000_000), "max_fork_rounds": (1, 1024),
    "deadline_s": (0.001, 7 * 86_400), "min_thread_tokens": (1, 1_000_000),
}


@dataclass(frozen=True)
class JobBudget:
    max_total_tokens: int = 8192
    max_width: int = 8
    max_depth: int = 2
    max_thread_tokens: int = 512
    max_fork_rounds: int = 16
    deadline_s: float = 300.0
    min_thread_tokens: int = 16

    def __post_init__(self):
        for name, value in asdict(self).items():
            lo, hi = LIMITS[name]
            if not lo <= value <= hi:
                raise BudgetError(f"budget.{name} must be in [{lo:g}, {hi:g}], got {value!r}")

    @classmethod
    def from_dict(cls, d: dict | None, base: JobBudget | None = None) -> JobBudget:
        base_d = asdict(base or cls())
        if not isinstance(d, dict | None):
            raise BudgetError(f"budget must be an object, got {type(d).__name__}")
        unknown = set(d or {}) - set(base_d)
        if unknown:
            raise BudgetError(f"unknown budget field(s): {', '.join(sorted(unknown))}")
        merged = {k: _typed(k, v, type(base_d[k])) for k, v in {**base_d, **(d or {})}.items()}
        return cls(**merged)


def _typed(name: str, value, kind: type) -> int | float:
    """``value`` as the field's type: ints from ints or integral floats, floats finite."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BudgetError(f"budget.{name} must be a finite number, got {value!r}")
    if kind is int:
        if value != int(value):
            raise BudgetError(f"budget.{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class Admission:
    width: int  # threads to run at once; 0 = refused, go on sequentially
    thread_max_tokens: int = 0
    reason: str = ""

    @property
    def admitted(self) -> bool:
        return self.width > 0


@dataclass
class JobUsage:
    budget: JobBudget
    opened_at: float
    tokens: int = 0
    forks: int = 0
    in_flight: int = 0
    per_thread: dict[str, int] = field(default_factory=dict)
    leased: dict[str, int] = field(default_factory=dict)  # node -> tokens granted, not yet reported used
    reports: dict[str, int] = field(default_factory=dict)  # node -> usage reports charged (numbered by the driver)
    exhausted: str = ""

    @property
    def remaining(self) -> int:
        return self.budget.max_total_tokens - self.tokens

    def spend(self, node: str, used: int, report: int = 0) -> None:
        """Tokens a thread reports used: charged, and taken off what it had leased. ``report``
        numbers the node's reports (0: unnumbered): one already charged is not charged again
        (a call Ray retried on a restarted coordinator that the driver's restored account holds)."""
        if report and report <= self.reports.get(node, 0):
            return
        if report:
            self.reports[node] = report
        self.tokens += used
        self.per_thread[node] = self.per_thread.get(node, 0) + used
        self.leased[node] = max(0, self.leased.get(node, 0) - used)

    def next_report(self, node: str) -> int:
        """The number of the node's next usage report."""
        return self.reports.get(node, 0) + 1


@dataclass(frozen=True)
class Lease:
    """The tokens a thread now holds, past those it has reported used (0 with ``stop``: why the
    job must stop)."""

    tokens: int
    stop: str = ""


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

    def restore(self, job_id: str, usage: JobUsage) -> None:
        """Takes back a job's account as its driver kept it (a restarted coordinator starts empty)."""
        self.jobs.setdefault(job_id, usage)

    def close_job(self, job_id: str) -> dict:
        usage = self.jobs.pop(job_id, None)
        return self.usage_dict(usage) if usage else {}

    def admit_fork(self, job_id: str, n: int, depth: int, now: float) -> Admission:
        job = self._job(job_id)
        b = job.budget
        refusal = self._refusal(job, n, depth, now)
        if refusal:
            return Admission(0, reason=refusal)
        free = self.max_threads_in_flight - self.in_flight
        width = max(1, min(n, b.max_width, free))
        per_thread = min(b.max_thread_tokens, job.remaining // n)
        job.forks += 1
        reason = "" if width == n else f"narrowed to {width} of {n} (waves)"
        return Admission(width, per_thread, reason)

    def _refusal(self, job: JobUsage, n: int, depth: int, now: float) -> str:
        b = job.budget
        if job.exhausted:
            return job.exhausted
        if now - job.opened_at > b.deadline_s:
            return "deadline passed"
        if depth > b.max_depth:
            return f"depth {depth} > max_depth {b.max_depth}"
        if job.forks >= b.max_fork_rounds:
            return f"fork rounds {job.forks} reached max_fork_rounds"
        if job.remaining // max(n, 1) < b.min_thread_tokens:
            return f"{job.remaining} tokens left: too few for {n} threads"
        return ""

    def start_threads(self, job_id: str, k: int) -> None:
        self._job(job_id).in_flight += k

    def end_thread(self, job_id: str) -> None:
        job = self._job(job_id)
        job.in_flight = max(0, job.in_flight - 1)

    def lease(self, job_id: str, node: str, used: int, want: int, now: float, report: int = 0) -> Lease:
        """Charges the ``used`` tokens ``node`` reports, then grants it up to ``want`` more from what
        is neither used nor leased to other threads (at most an even share of it per thread in
        flight), and returns what it now holds. None, with the reason, once the job is
        exhausted: its deadline passed, or the thread has used its lease and none is left to
        grant (a thread asking ahead, with some of its lease left, just gets none for now).
        ``report`` numbers the usage report (JobUsage.spend)."""
        job = self._job(job_id)
        job.spend(node, used, report)
        free = job.remaining - sum(job.leased.values())
        if free <= 0 and job.leased[node] == 0:  # it needs tokens; none are left
            self._exhaust(job, f"token budget exhausted ({job.tokens} used, {job.remaining - free} leased, "
                               f"of {job.budget.max_total_tokens})")
        self._check_deadline(job, now)
        if job.exhausted:
            return Lease(0, job.exhausted)
        share = -(-free // max(1, job.in_flight))  # an even share of what is left per running thread
        job.leased[node] += max(0, min(want, share))  # none now, while the thread still has some
        return Lease(job.leased[node])

    def settle(self, job_id: str, node: str, used: int, now: float, report: int = 0) -> str:
        """A request has ended: its last ``used`` tokens are charged and its lease given back.
        Returns why the job must stop ("" if it may go on): it has used every token, or its
        deadline passed. ``report`` numbers the usage report (JobUsage.spend)."""
        job = self._job(job_id)
        job.spend(node, used, report)
        job.leased.pop(node, None)
        if job.remaining <= 0:
            self._exhaust(job, f"token budget exhausted ({job.tokens}/{job.budget.max_total_tokens})")
        self._check_deadline(job, now)
        return job.exhausted

    @staticmethod
    def _exhaust(job: JobUsage, why: str) -> None:
        job.exhausted = job.exhausted or why

    def _check_deadline(self, job: JobUsage, now: float) -> None:
        if now - job.opened_at > job.budget.deadline_s:
            self._exhaust(job, f"deadline of {job.budget.deadline_s}s passed")

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
