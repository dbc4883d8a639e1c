"""One job's account and the policy on it: forks admitted, token leases granted and settled.

A fork of N threads is admitted at width min(N, max_width, the cluster's free thread slots),
never below 1 (the other threads run in later waves, never dropped), or refused past max depth,
max fork rounds, the deadline, or without tokens for every thread (the model then goes on
sequentially). A thread decodes on a lease of tokens reserved for it and comes back only when
the lease runs low (reporting what it used) or when it ends (settle). Tokens used plus tokens
leased never pass the job's total; once a lease cannot be granted, or the deadline has passed,
the job is exhausted. Time is passed in, never read, so the policy is tested deterministically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.budget.policy import Admission, Grant, JobBudget, JobUsage

if TYPE_CHECKING:
    from orchestrator.budget.calls import AccountCall


@dataclass
class JobAccount:
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

    def usage(self) -> JobUsage:
        return JobUsage(self.tokens, self.forks, dict(self.per_thread), self.exhausted, self.budget)

    def apply(self, call: AccountCall) -> Grant | str | None:
        """A driver's call, in its order, and its answer. None for a call this account already
        holds: Ray retried it on a restarted coordinator that the driver's restore had already
        brought up to date."""
        if call.seq <= self.calls:
            return None
        self.calls = call.seq
        return call.apply_to(self)

    # -- forks
    def admit(self, n: int, depth: int, now: float, free: int) -> Admission:
        """``admission``, counted when admitted."""
        adm = self.admission(n, depth, now, free)
        if adm.admitted:
            self.count_fork()
        return adm

    def admission(self, n: int, depth: int, now: float, free: int) -> Admission:
        """A fork of ``n`` threads at ``depth`` with ``free`` thread slots left in the cluster:
        refused (width 0, and why), or admitted at width min(n, max_width, free), never below 1.
        Nothing is counted (a driver counts it by its ``CountFork`` call)."""
        refusal = self.refusal(n, depth, now)
        if refusal:
            return Admission(0, reason=refusal)
        b = self.budget
        width = max(1, min(n, b.max_width, free))
        per_thread = min(b.max_thread_tokens, self.remaining // n)
        return Admission(width, per_thread, "" if width == n else f"narrowed to {width} of {n} (waves)")

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

    def count_fork(self) -> None:
        self.forks += 1

    def count_threads(self, n: int) -> None:
        """``n`` threads started (> 0) or ended (< 0)."""
        self.in_flight = max(0, self.in_flight + n)

    # -- tokens
    def lease(self, node: str, used: int, want: int, now: float) -> Grant:
        """Charges the ``used`` tokens ``node`` reports, then grants it up to ``want`` more from what
        is neither used nor leased to other threads (at most an even share of it per thread in
        flight), and returns what it now holds. A stop, with the reason, once the job is
        exhausted: its deadline passed, or the thread has used its lease and none is left to
        grant (a thread asking ahead, with some of its lease left, just gets none for now)."""
        self.spend(node, used)
        free = self.remaining - sum(self.leased.values())
        if free <= 0 and self.leased[node] == 0:  # it needs tokens; none are left (spend set its entry)
            self.exhaust(f"token budget exhausted ({self.tokens} used, {self.remaining - free} leased, "
                         f"of {self.budget.max_total_tokens})")
        self.check_deadline(now)
        if self.exhausted:
            return Grant(0, self.exhausted)
        share = -(-free // max(1, self.in_flight))  # an even share of what is left per running thread
        self.leased[node] += max(0, min(want, share))  # none now, while the thread still has some
        return Grant(self.leased[node], until=self.opened_at + self.budget.deadline_s)

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

    def spend(self, node: str, used: int) -> None:
        """Tokens a thread reports used: charged, and taken off what it had leased."""
        self.tokens += used
        self.per_thread[node] = self.per_thread.get(node, 0) + used
        self.leased[node] = max(0, self.leased.get(node, 0) - used)

    def exhaust(self, why: str) -> None:
        self.exhausted = self.exhausted or why

    def check_deadline(self, now: float) -> None:
        if now - self.opened_at > self.budget.deadline_s:
            self.exhaust(f"deadline of {self.budget.deadline_s}s passed")
