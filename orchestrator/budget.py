"""The compute budget: a ledger per job and one for the cluster. Plain Python, no Ray.

The coordinator actor (coordinator.py) wraps one ``Ledger``, and each job's driver keeps an exact
copy of its jobs' accounts (``JobUsage``) that answers leases and settles the same way; every
decision is made here so that the policy is tested deterministically (time is passed in, never read).
- admit_fork: width w <= N from the job's max width and the cluster's free thread slots;
  the N - w others run in later waves, never dropped. A fork past max depth, max fork
  rounds, or without tokens for every thread is refused: the model goes on sequentially.
  The job's part of that decision is its account's (``JobUsage.admit``), so a driver with a
  recent count of the cluster's threads admits its forks itself, as the ledger would.
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


EXPIRY_GRACE_S = 60.0  # an account this long past its job's deadline belongs to a dead driver


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
    calls: int = 0  # the driver's calls applied (BudgetCall.seq)
    exhausted: str = ""

    @property
    def remaining(self) -> int:
        return self.budget.max_total_tokens - self.tokens

    def spend(self, node: str, used: int) -> None:
        """Tokens a thread reports used: charged, and taken off what it had leased."""
        self.tokens += used
        self.per_thread[node] = self.per_thread.get(node, 0) + used
        self.leased[node] = max(0, self.leased.get(node, 0) - used)

    def apply(self, call: BudgetCall) -> Lease | str | None:
        """A driver's call, in its order: a lease's grant, a settle's verdict, or None (threads
        counted, a fork the driver admitted counted, or a call this account already holds: Ray
        retried it on a restarted coordinator that the driver's restore had already brought up
        to date)."""
        if call.seq <= self.calls:
            return None
        self.calls = call.seq
        if call.kind == "lease":
            return self.lease(call.node, call.used, call.want, call.now)
        if call.kind == "settle":
            return self.settle(call.node, call.used, call.now)
        if call.kind == "fork":
            self.forks += 1
        elif call.kind == "threads":
            self.count_threads(call.threads)
        else:
            raise BudgetError(f"unknown budget call {call.kind!r}")
        return None

    def admit(self, n: int, depth: int, now: float, free: int) -> Admission:
        """``admission``, counted when admitted."""
        adm = self.admission(n, depth, now, free)
        self.forks += adm.admitted
        return adm

    def admission(self, n: int, depth: int, now: float, free: int) -> Admission:
        """A fork of ``n`` threads at ``depth`` with ``free`` thread slots left in the cluster:
        refused (width 0, and why), or admitted at width min(n, max_width, free), never below 1.
        Nothing is counted (a driver counts it by its "fork" call)."""
        refusal = self.refusal(n, depth, now)
        if refusal:
            return Admission(0, reason=refusal)
        b = self.budget
        width = max(1, min(n, b.max_width, free))
        per_thread = min(b.max_thread_tokens, self.remaining // n)
        reason = "" if width == n else f"narrowed to {width} of {n} (waves)"
        return Admission(width, per_thread, reason)

    def refusal(self, n: int, depth: int, now: float) -> str:
        b = self.budget
        if self.exhausted:
            return self.exhausted
        if now - self.opened_at > b.deadline_s:
            return "deadline passed"
        if depth > b.max_depth:
            return f"depth {depth} > max_depth {b.max_depth}"
        if self.forks >= b.max_fork_rounds:
            return f"fork rounds {self.forks} reached max_fork_rounds"
        if self.remaining // max(n, 1) < b.min_thread_tokens:
            return f"{self.remaining} tokens left: too few for {n} threads"
        return ""

    def count_threads(self, n: int) -> None:
        """``n`` threads started (> 0) or ended (< 0)."""
        self.in_flight = max(0, self.in_flight + n)

    def lease(self, node: str, used: int, want: int, now: float) -> Lease:
        """Charges the ``used`` tokens ``node`` reports, then grants it up to ``want`` more from what
        is neither used nor leased to other threads (at most an even share of it per thread in
        flight), and returns what it now holds. None, with the reason, once the job is
        exhausted: its deadline passed, or the thread has used its lease and none is left to
        grant (a thread asking ahead, with some of its lease left, just gets none for now)."""
        self.spend(node, used)
        free = self.remaining - sum(self.leased.values())
        if free <= 0 and self.leased[node] == 0:  # it needs tokens; none are left (spend set its entry)
            self.exhaust(f"token budget exhausted ({self.tokens} used, {self.remaining - free} leased, "
                         f"of {self.budget.max_total_tokens})")
        self.check_deadline(now)
        if self.exhausted:
            return Lease(0, self.exhausted)
        share = -(-free // max(1, self.in_flight))  # an even share of what is left per running thread
        self.leased[node] += max(0, min(want, share))  # none now, while the thread still has some
        return Lease(self.leased[node], until=self.opened_at + self.budget.deadline_s)

    def settle(self, node: str, used: int, now: float) -> str:
        """A request has ended: its last ``used`` tokens are charged and its lease given back.
        Returns why the job must stop ("" if it may go on): it has used every token, or its
        deadline passed."""
        self.spend(node, used)
        self.leased.pop(node, None)
        if self.remaining <= 0:
            self.exhaust(f"token budget exhausted ({self.tokens}/{self.budget.max_total_tokens})")
        self.check_deadline(now)
        return self.exhausted

    def exhaust(self, why: str) -> None:
        self.exhausted = self.exhausted or why

    def check_deadline(self, now: float) -> None:
        if now - self.opened_at > self.budget.deadline_s:
            self.exhaust(f"deadline of {self.budget.deadline_s}s passed")


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


@dataclass(frozen=True)
class Lease:
    """The tokens a thread now holds, past those it has reported used (0 with ``stop``: why the
    job must stop)."""

    tokens: int
    stop: str = ""
    # when the job's deadline passes (the ledger's clock, epoch seconds): said with the grant, not part of it
    until: float = field(default=math.inf, compare=False)


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
