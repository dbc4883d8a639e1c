import random

import pytest

from models.task import LABELS, parse_question, random_question, sum_lines, term_work, thread_samples, trace
from orchestrator.plan.parser import PlanClosed, PlanParser
from orchestrator.plan.published import THREADWEAVER


@pytest.mark.parametrize("text", ["Q: 7*8", "Q: 123*4+56*7+89", "Q: 905*9+14*3+220*6+3+71*0"])
def test_examples_from_the_issue_parse(text):
    assert parse_question(text).expr == text[3:]


@pytest.mark.parametrize("text", ["Q: 1234", "Q: 12*34", "Q: 1+2+3+4+5+6", "Q: a*2", "Q: 1*"])
def test_out_of_distribution_questions_are_refused(text):
    with pytest.raises(ValueError):
        parse_question(text)


def test_traces_are_correct_and_fork_exactly_when_two_products():
    rng = random.Random(7)
    for _ in range(300):
        q = random_question(rng)
        t = trace(q)
        assert t.endswith(f"A: {q.answer}")
        plans = [e.plan for e in PlanParser(THREADWEAVER).feed(q.prompt + t) if isinstance(e, PlanClosed)]
        k = len(q.products)
        assert len(plans) == (1 if k >= 2 else 0)
        if plans:
            assert [o.text.split(" ", 1)[1] for o in plans[0].outlines] == [str(p) for p in q.products]
            assert len(thread_samples(q)) == k - 1


def test_scratchpads_compute_the_values():
    q = parse_question("Q: 905*9+3")
    assert term_work("a", q.terms[0]).endswith("\na=54180")  # 8145 reversed, padded
    assert term_work("b", q.terms[1]) == "b 3\nb=30000"
    lines = sum_lines([8145, 3]).splitlines()
    assert lines == ["a=54180+00000=54180", "b=30000+54180=84180"]  # 8148 reversed


def test_every_sum_line_finds_its_value_under_a_unique_key():
    rng = random.Random(11)
    for _ in range(200):
        q = random_question(rng)
        t = trace(q)
        body = t[:t.index("\n" + sum_lines([x.value for x in q.terms]).splitlines()[0])]
        for label in LABELS[:len(q.terms)]:
            assert body.count(f"\n{label}=") == 1, (q.expr, label)
