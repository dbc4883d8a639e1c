"""Loom's fork, thread prompts and join, run as jobs through the driver, against what each
published format's own controller sends its model: every prompt byte for byte, the job's text,
how it ended (tests/data/conformance/, written from the rules in docs/formats.md)."""
from __future__ import annotations

from pathlib import Path

import pytest
import tw_validator
from conformance import load_cases, run_case
from transformers import AutoTokenizer

from orchestrator.budget.policy import JobBudget
from orchestrator.plan.published import MULTIVERSE

MODEL = Path(__file__).resolve().parent.parent / "models" / "loom-arith"  # its tokenizer has every tag as a token


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(MODEL))


CASES = [(fmt, c) for fmt in ("threadweaver", "multiverse", "apr") for c in load_cases(fmt)]


@pytest.mark.parametrize("fmt,case", CASES, ids=[f"{f}: {c['name']}" for f, c in CASES])
def test_loom_sends_what_the_authors_controller_sends(tok, fmt, case):
    record, model = run_case(tok, case)
    want = case["expect"]
    assert record.status == "done", (record.error, record.notes)
    assert sorted(model.prompts) == sorted(want["prompts"])
    assert record.result["text"] == want["text"]
    assert record.result["finish"] == want["finish"]
    assert [n["label"] for n in record.dag["nodes"] if n["kind"] == "thread"] == want["threads"]
    for note in want.get("notes", []):
        assert any(note in n for n in record.notes), (note, record.notes)


def test_threadweavers_validator_accepts_loom_join_and_refuses_the_old_one(tok):
    case = load_cases("threadweaver")[0]
    _, model = run_case(tok, case)
    joined = max(model.prompts, key=len)
    assert tw_validator.problems(joined + "</Parallel>") == []
    assert tw_validator.problems(joined.replace("</Thread><Thread>", "</Thread>\n<Thread>") + "</Parallel>") == [
        "Nonempty whitespace between Thread tags"]


def test_the_default_budget_lets_multiverse_fork_as_deep_as_its_engine():
    assert JobBudget().max_depth >= MULTIVERSE.max_depth == 6


def test_a_guard_replaced_as_the_budget_runs_out_is_in_the_result(tok):
    """What the job returns is the main lane's context as it stands: after its guard was replaced,
    also when the budget runs out right there (the next segment is refused)."""
    case = next(c for c in load_cases("apr") if "<Sub Searches> itself" in c["name"])
    first = case["rules"][0]["output"]
    budget = {"max_total_tokens": len(tok.encode(first, add_special_tokens=False)) + 1}
    record, _ = run_case(tok, {**case, "budget": budget})
    assert record.result["finish"] == "budget", (record.error, record.notes)
    assert record.result["text"] == first.replace("<Sub Searches>", "<Calling Sub Searches>")
