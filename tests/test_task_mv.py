"""The Multiverse-format task: nested traces, the paths as the orchestrator runs them alone."""
import random

import pytest

from models import task_mv
from orchestrator.plan.parser import Malformed, PlanClosed, PlanParser
from orchestrator.plan.published import MULTIVERSE


def questions(n: int, seed: int):
    rng = random.Random(seed)
    return [task_mv.random_question(rng) for _ in range(n)]


@pytest.mark.parametrize("text", ["Q: 345*67+89+12*3", "Q: 7*8", "Q: 905*99+3+1*10"])
def test_two_digit_multipliers_parse(text):
    assert task_mv.parse_question(text).expr == text[3:]


@pytest.mark.parametrize("text", ["Q: 1*123", "Q: 1234*5", "Q: 1+2+3+4+5+6", "Q: 3*"])
def test_out_of_distribution_questions_are_refused(text):
    with pytest.raises(ValueError):
        task_mv.parse_question(text)


def test_traces_answer_and_fork_as_expected_at_both_depths():
    for q in questions(300, seed=5):
        full = q.prompt + task_mv.trace(q)
        assert full.endswith(f"</Think>\nA: {q.answer}")
        events = PlanParser(MULTIVERSE).feed(full)
        assert not [e for e in events if isinstance(e, Malformed)], q.expr
        plans = [e.plan for e in events if isinstance(e, PlanClosed)]
        want = task_mv.expected_threads(q)
        assert sum(len(p.outlines) for p in plans) == want.threads, q.expr
        ids = [o.id for p in plans for o in p.outlines]
        assert max((i.count(".") + 1 for i in ids), default=0) == want.depth, q.expr


def test_a_nested_block_sits_inside_its_own_path_and_its_conclusion_adds_the_partials():
    q = task_mv.parse_question("Q: 345*67+89+12*3")
    t = task_mv.trace(q)
    path = t[t.index("<Path>\n1: a 345*67"):t.index("<Path>\n2:")]
    assert "<Outline>1.1: a1 345*7</Outline>" in path and "<Outline>1.2: a2 345*6</Outline>" in path
    assert f"a:{task_mv.rev(345 * 7)}+{task_mv.rev(345 * 60)}={task_mv.rev(345 * 67)}" in path
    assert path.endswith(f"a={task_mv.rev(345 * 67)}</Path>\n")
    total = 345 * 67 + 89 + 36
    assert t.endswith(f"c={task_mv.rev(36)}+{task_mv.rev(total - 36)}={task_mv.rev(total)}\nA={total:06d}\n"
                      f"</Conclusion>\n</Parallel>\n</Think>\nA: {total}")


def test_each_path_run_alone_writes_what_the_sequential_trace_holds():
    """Joining the paths in plan order gives the sequential text: every sample's completion
    follows its header in the trace, and its context is the trace's text at its fork."""
    for q in questions(200, seed=9):
        w = task_mv.work(q)
        full = q.prompt + w.text
        for s in w.samples:
            header = s.context[s.context.rindex("\n<Path>\n"):]
            assert header + s.completion in full, q.expr
            fork = s.context[:-len(header)]
            assert fork.endswith("</Goal>")
            plan_start = fork.rindex("<Parallel>")
            assert full.count(fork[plan_start:]) >= 1


def test_every_sum_line_finds_its_value_under_a_unique_key():
    for q in questions(200, seed=11):
        t = task_mv.trace(q)
        body = t[:t.index("\n" + task_mv.sum_lines([x.value for x in q.terms]).splitlines()[0])]
        for label in "abcde"[:len(q.terms)]:
            assert body.count(f"\n{label}=") == 1, (q.expr, label)
