import random

import pytest

from models.task import parse_question, product_steps, random_question, sum_steps, thread_samples, trace
from orchestrator.plan.formats import THREADWEAVER
from orchestrator.plan.parser import PlanClosed, PlanParser


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
            assert [o.text for o in plans[0].outlines] == [str(p) for p in q.products]
            assert len(thread_samples(q)) == k - 1


def test_scratchpads_compute_the_values():
    q = parse_question("Q: 905*9+3")
    assert product_steps(q.terms[0]).endswith("=54180")  # 8145 reversed, padded
    last = sum_steps([8145, 3]).splitlines()
    assert last[0] == "t: 54180 30000" and len(last) == 6
