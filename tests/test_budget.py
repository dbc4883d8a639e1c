import pytest

from orchestrator.budget.account import JobAccount
from orchestrator.budget.calls import CloseJob, CountFork, CountThreads, GrantLease, OpenJob, Settle
from orchestrator.budget.ledger import Ledger
from orchestrator.budget.policy import Admission, BudgetError, Grant, JobBudget


def ledger(**budget):
    led = Ledger(max_threads_in_flight=8)
    led.open_job("j", JobBudget(**budget), now=0.0)
    return led


def test_fork_admitted_at_full_width_with_per_thread_cap():
    adm = ledger(max_total_tokens=1000, max_thread_tokens=100).admit_fork("j", 4, depth=1, now=1.0)
    assert adm.width == 4 and adm.thread_max_tokens == 100 and adm.reason == ""


def test_width_narrowed_by_job_and_by_cluster_never_below_one():
    assert ledger(max_width=2).admit_fork("j", 5, 1, 0.0).width == 2
    led = ledger()
    led.open_job("other", JobBudget(), 0.0)
    led.account("other").count_threads(7)
    adm = led.admit_fork("j", 4, 1, 0.0)
    assert adm.width == 1 and "waves" in adm.reason
    led.account("other").count_threads(1)
    assert led.admit_fork("j", 4, 1, 0.0).width == 1


def test_per_thread_tokens_shrink_with_what_is_left():
    led = ledger(max_total_tokens=400, max_thread_tokens=500)
    led.account("j").lease("n0", 0, 100, 0.0)
    led.account("j").settle("n0", 100, 0.0)
    assert led.admit_fork("j", 3, 1, 0.0).thread_max_tokens == 100


@pytest.mark.parametrize("budget,n,depth,now,reason", [
    ({"max_depth": 1}, 2, 2, 0.0, "max_depth"),
    ({"deadline_s": 5}, 2, 1, 6.0, "deadline"),
    ({"max_total_tokens": 40, "min_thread_tokens": 16}, 3, 1, 0.0, "too few"),
])
def test_forks_refused_go_sequential(budget, n, depth, now, reason):
    adm = ledger(**budget).admit_fork("j", n, depth, now)
    assert not adm.admitted and reason in adm.reason


def test_fork_rounds_are_capped():
    led = ledger(max_fork_rounds=2)
    assert led.admit_fork("j", 2, 1, 0.0).admitted and led.admit_fork("j", 2, 1, 0.0).admitted
    assert "max_fork_rounds" in led.admit_fork("j", 2, 1, 0.0).reason


def test_leases_never_pass_the_total_and_record_what_each_thread_used():
    led = ledger(max_total_tokens=100, deadline_s=10)
    assert led.account("j").lease("n1", 0, 64, 1.0) == Grant(64)
    assert led.account("j").lease("n2", 0, 64, 1.0) == Grant(36)  # what n1 does not hold
    assert led.account("j").lease("n1", 50, 64, 2.0) == Grant(14)  # asked ahead: none more now, no stop
    stop = led.account("j").lease("n1", 14, 64, 2.0).stop  # used it all, and all else is leased
    assert stop == "token budget exhausted (64 used, 36 leased, of 100)" == led.jobs["j"].exhausted
    led.account("j").settle("n1", 0, 0.0)
    led.account("j").settle("n2", 30, 0.0)  # ended early: the rest of its lease comes back, but the job has stopped
    assert led.usage("j").per_thread == {"n1": 64, "n2": 30} and led.jobs["j"].leased == {}
    assert led.account("j").lease("n3", 0, 8, 3.0).stop.startswith("token budget exhausted")


def test_a_lease_given_back_is_granted_again():
    led = ledger(max_total_tokens=100)
    led.account("j").lease("n1", 0, 80, 0.0)
    assert led.account("j").lease("n2", 0, 64, 0.0) == Grant(20)
    led.account("j").settle("n1", 10, 0.0)
    assert led.account("j").lease("n2", 20, 64, 0.0) == Grant(64)  # 10 + 20 used, 0 left to n2: 64 more
    assert led.account("j").remaining == 70


def test_a_lease_tells_when_the_jobs_deadline_passes():
    led = ledger(deadline_s=10)  # opened at 0.0
    assert led.account("j").lease("n1", 0, 8, 1.0).until == 10.0


def test_a_lease_past_the_deadline_is_refused():
    led = ledger(deadline_s=10)
    assert led.account("j").lease("n1", 0, 8, 1.0) == Grant(8)
    assert "deadline" in led.account("j").lease("n1", 8, 8, 11.0).stop
    assert led.usage("j").tokens == 8


def test_thread_slots_are_counted_and_released():
    led = ledger()
    led.account("j").count_threads(3)
    led.account("j").count_threads(-1)
    assert led.cluster()["threads_in_flight"] == 2
    usage = led.close_job("j")
    assert usage.tokens == 0 and led.cluster()["threads_in_flight"] == 0


def test_bad_budgets_are_named():
    with pytest.raises(BudgetError, match="max_width"):
        JobBudget(max_width=0)
    with pytest.raises(BudgetError, match="unknown budget field"):
        JobBudget.from_dict({"max_widht": 3})
    with pytest.raises(BudgetError):
        JobBudget.from_dict({"max_width": "lots"})
    with pytest.raises(BudgetError, match="not open"):
        Ledger().account("nope")


def test_a_restored_account_carries_on_where_it_was():
    led = ledger(max_total_tokens=100)
    led.account("j").count_threads(3)
    led.account("j").lease("n1", 0, 30, 0.0)
    led.account("j").lease("n1", 30, 10, 0.0)  # holds 10
    kept = led.jobs["j"]
    fresh = Ledger(max_threads_in_flight=8)  # a restarted coordinator
    with pytest.raises(BudgetError, match="not open"):
        fresh.account("j").lease("n1", 1, 1, 0.0)
    fresh.restore("j", kept)
    assert fresh.in_flight == 3 and fresh.account("j").remaining == 70
    assert fresh.account("j").lease("n2", 0, 100, 0.0) == Grant(20)  # n1's 10 still stand: 60 free, 3 threads
    fresh.account("j").settle("n1", 10, 0.0)
    fresh.account("j").settle("n2", 20, 0.0)
    assert fresh.account("j").remaining == 40 and fresh.jobs["j"].leased == {}


def test_threads_in_flight_lease_even_shares_of_what_is_left():
    led = ledger(max_total_tokens=100)
    led.account("j").count_threads(4)
    assert [led.account("j").lease(f"n{i}", 0, 64, 0.0).tokens for i in range(4)] == [25, 19, 14, 11]
    assert led.account("j").lease("n0", 25, 64, 0.0) == Grant(8)  # n0 used its 25: a share of the 31 left


def test_a_request_that_ends_on_the_last_token_of_the_budget_stops_the_job():
    led = ledger(max_total_tokens=60, deadline_s=10)
    led.account("j").lease("n0", 0, 64, 0.0)
    assert led.account("j").settle("n1", 0, 1.0) == ""
    assert led.account("j").settle("n0", 60, 1.0) == "token budget exhausted (60/60)"
    assert ledger(deadline_s=10).account("j").settle("n0", 5, 11.0) == "deadline of 10s passed"


def test_a_drivers_calls_applied_in_order_give_the_drivers_answers_and_a_retried_one_is_skipped():
    """The driver answers from its copy (JobAccount.apply) and the ledger applies the same numbered
    calls; one Ray retries on a restarted ledger that the driver's restore already brought up to
    date is skipped, and the next one is applied."""
    copy = JobAccount(JobBudget(max_total_tokens=100), opened_at=0.0)
    calls = [CountThreads("j", 1, 0.0, 2), GrantLease("j", 2, 0.0, "n1", 0, 64),
             GrantLease("j", 3, 0.0, "n2", 0, 64),
             Settle("j", 4, 0.0, "n1", 22), CountThreads("j", 5, 0.0, -1)]
    answers = [copy.apply(c) for c in calls]
    assert answers == [None, Grant(50), Grant(25), "", None]  # n2: a share of the 50 n1 does not hold
    led = Ledger(max_threads_in_flight=8)
    assert led.apply([OpenJob("j", 0, 0.0, copy.budget), *calls]) == [""] * 6
    assert led.usage("j") == copy.usage() and led.in_flight == 1
    fresh = Ledger(max_threads_in_flight=8)  # restarted: knows no job until the driver restores
    assert fresh.apply(calls[-1:]) == ["job 'j' is not open in the ledger"]
    fresh.restore("j", copy)
    fresh.apply(calls[-2:])  # retried by Ray after the restore
    assert fresh.account("j").remaining == 78 and fresh.in_flight == 1
    fresh.apply([Settle("j", 6, 0.0, "n2", 5)])
    assert fresh.account("j").remaining == 73 and fresh.jobs["j"].per_thread == {"n1": 22, "n2": 5}


def test_a_close_call_frees_the_jobs_threads_and_is_a_no_op_for_a_job_the_ledger_does_not_know():
    led = Ledger(max_threads_in_flight=4)
    open_ = OpenJob("j", 0, 0.0, JobBudget())
    assert led.apply([open_, CountThreads("j", 1, 0.0, 3)]) == ["", ""]
    led.open_job("k", JobBudget(), 0.0)
    assert led.admit_fork("k", 2, 1, 0.0).width == 1  # one slot of four left
    assert led.apply([CloseJob("j", 2, 0.0)]) == [""]
    assert led.cluster() == {"jobs": 1, "threads_in_flight": 0, "max_threads_in_flight": 4}
    assert led.admit_fork("k", 2, 1, 0.0).width == 2  # j's slots are free again
    assert Ledger().apply([CloseJob("gone", 7, 0.0)]) == [""]  # restarted, never restored


def test_a_fork_the_driver_admitted_counts_in_the_ledger_once_and_toward_max_fork_rounds():
    """A driver admits with its copy (JobAccount.admit, as the ledger would with the same free slots)
    and sends a numbered CountFork call: the ledger counts it, skips it when Ray retries it, and
    refuses the round past max_fork_rounds itself."""
    copy = JobAccount(JobBudget(max_total_tokens=1000, max_fork_rounds=2), opened_at=0.0)
    led = Ledger(max_threads_in_flight=8)
    led.open_job("j", copy.budget, 0.0)
    led.open_job("k", JobBudget(), 0.0)
    led.account("k").count_threads(5)  # another job's threads: 3 slots free
    assert copy.admit(4, 1, 0.0, free=3) == led.admit_fork("j", 4, 1, 0.0) == Admission(3, 250, "narrowed to 3 of 4 (waves)")
    led.jobs["j"].forks = 0  # the ledger's admission was only to compare: the driver made this one
    fork = CountFork("j", 1, 0.0)
    assert led.apply([fork, fork]) == ["", ""] and led.usage("j").forks == 1  # the retry skipped
    assert led.admit_fork("j", 2, 1, 0.0).admitted  # the second round
    assert led.admit_fork("j", 2, 1, 0.0).reason == "fork rounds 2 reached max_fork_rounds"
    assert copy.admit(2, 1, 0.0, free=8).admitted and not copy.admit(2, 1, 0.0, free=8).admitted


def test_an_account_a_minute_past_its_deadline_is_dropped_with_its_threads():
    """A driver that died never closes its jobs: their threads would hold the cluster's slots."""
    led = Ledger(max_threads_in_flight=4)
    led.open_job("dead", JobBudget(deadline_s=10), 0.0)
    led.account("dead").count_threads(3)
    led.open_job("live", JobBudget(deadline_s=100), 0.0)
    assert led.expire(now=70.0) == []  # 60 s past the deadline, not more
    assert led.expire(now=70.5) == ["dead"]
    assert led.cluster() == {"jobs": 1, "threads_in_flight": 0, "max_threads_in_flight": 4}
    assert led.admit_fork("live", 4, 1, 70.5).width == 4  # its slots are free again
