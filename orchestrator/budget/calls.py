"""The calls a driver makes on its jobs' accounts, one class each.

A driver answers each call from its own exact copy of the job's account and sends the same call
to the coordinator's ledger, which applies the driver's calls in the order they were sent and so
comes to the same answers. ``seq`` numbers a job's calls (0 opens it): a call the account
already holds is skipped (Ray retried it on a restarted coordinator that the driver's restore
had already brought up to date).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.budget.policy import BudgetError, Grant, JobBudget

if TYPE_CHECKING:
    from orchestrator.budget.account import JobAccount
    from orchestrator.budget.ledger import Ledger


@dataclass(frozen=True)
class BudgetCall:
    job_id: str
    seq: int
    now: float  # the driver's clock when it answered the call

    def apply_on(self, ledger: Ledger) -> str:
        """Applied by the ledger: "" or why not (it does not know the job: restarted)."""
        raise NotImplementedError


@dataclass(frozen=True)
class OpenJob(BudgetCall):
    budget: JobBudget

    def apply_on(self, ledger: Ledger) -> str:
        ledger.open_job(self.job_id, self.budget, self.now)
        return ""


@dataclass(frozen=True)
class CloseJob(BudgetCall):
    def apply_on(self, ledger: Ledger) -> str:
        ledger.close_job(self.job_id)  # a job a restarted ledger never got back has nothing to close
        return ""


@dataclass(frozen=True)
class AccountCall(BudgetCall):
    """A call on an open job's account."""

    def apply_on(self, ledger: Ledger) -> str:
        try:
            account = ledger.account(self.job_id)
        except BudgetError as e:  # not open there: said back to the driver, which restores its accounts
            return str(e)
        account.apply(self)
        return ""

    def apply_to(self, account: JobAccount) -> Grant | str | None:
        raise NotImplementedError


@dataclass(frozen=True)
class GrantLease(AccountCall):
    """A thread reports ``used`` tokens and asks for up to ``want`` more."""

    node: str
    used: int
    want: int

    def apply_to(self, account: JobAccount) -> Grant:
        return account.lease(self.node, self.used, self.want, self.now)


@dataclass(frozen=True)
class Settle(AccountCall):
    """A request ended having used ``used`` more tokens; its lease is given back."""

    node: str
    used: int

    def apply_to(self, account: JobAccount) -> str:
        return account.settle(self.node, self.used, self.now)


@dataclass(frozen=True)
class CountThreads(AccountCall):
    """``delta`` threads started (> 0) or ended (< 0)."""

    delta: int

    def apply_to(self, account: JobAccount) -> None:
        account.count_threads(self.delta)


@dataclass(frozen=True)
class CountFork(AccountCall):
    """A fork the driver admitted itself (toward max_fork_rounds)."""

    def apply_to(self, account: JobAccount) -> None:
        account.count_fork()


@dataclass(frozen=True)
class Applied:
    """The coordinator's answer to a batch of calls: per call "" or why it was not applied, and
    the cluster's threads in flight once it was (a driver's view for admitting forks itself)."""

    errors: list[str]
    threads_in_flight: int
    max_threads_in_flight: int
