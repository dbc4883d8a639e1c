import pytest

from orchestrator.budget import BudgetError, JobBudget, Ledger


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
    led.start_threads("other", 7)
    adm = led.admit_fork("j", 4, 1, 0.0)
    assert adm.width == 1 and "waves" in adm.reason
    led.start_threads("other", 1)
    assert led.admit_fork("j", 4, 1, 0.0).width == 1


def test_per_thread_tokens_shrink_with_what_is_left():
    led = ledger(max_total_tokens=400, max_thread_tokens=500)
    led.charge("j", "n0", 100, 0.0)
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


def test_charge_reports_exhaustion_and_deadline_and_records_per_thread():
    led = ledger(max_total_tokens=50, deadline_s=10)
    assert led.charge("j", "n1", 30, 1.0) == ""
    assert "exhausted" in led.charge("j", "n2", 30, 2.0)
    assert led.usage("j")["per_thread"] == {"n1": 30, "n2": 30}
    led2 = ledger(deadline_s=10)
    assert "deadline" in led2.charge("j", "n1", 1, 11.0)


def test_thread_slots_are_counted_and_released():
    led = ledger()
    led.start_threads("j", 3)
    led.end_thread("j")
    assert led.cluster()["threads_in_flight"] == 2
    usage = led.close_job("j")
    assert usage["tokens"] == 0 and led.cluster()["threads_in_flight"] == 0


def test_bad_budgets_are_named():
    with pytest.raises(BudgetError, match="max_width"):
        JobBudget(max_width=0)
    with pytest.raises(BudgetError, match="unknown budget field"):
        JobBudget.from_dict({"max_widht": 3})
    with pytest.raises(BudgetError):
        JobBudget.from_dict({"max_width": "lots"})
    with pytest.raises(BudgetError, match="not open"):
        Ledger().charge("nope", "n", 1, 0.0)


def test_a_restored_account_carries_on_where_it_was():
    led = ledger(max_total_tokens=100)
    led.start_threads("j", 3)
    led.charge("j", "n1", 40, 0.0)
    kept = led.jobs["j"]
    fresh = Ledger(max_threads_in_flight=8)  # a restarted coordinator
    with pytest.raises(BudgetError, match="not open"):
        fresh.charge("j", "n1", 1, 0.0)
    fresh.restore("j", kept)
    assert fresh.in_flight == 3 and fresh.remaining("j") == 60
    assert fresh.charge("j", "n2", 60, 0.0).startswith("token budget exhausted")
    assert fresh.admit_fork("j", 2, 1, 0.0).width == 0
