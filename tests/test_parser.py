from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.plan.formats import Outline
from orchestrator.plan.parser import (
    BlockClosed,
    Malformed,
    OutlineSeen,
    PlanClosed,
    PlanOpened,
    PlanParser,
    ThreadClosed,
)
from orchestrator.plan.published import MULTIVERSE, THREADWEAVER

outline_text = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)),
                       min_size=1, max_size=20).map(str.strip).filter(bool)
thread_text = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=30)


def feed_in_chunks(parser, text, cuts):
    events, pos = [], 0
    for c in sorted({c % (len(text) + 1) for c in cuts}) + [len(text)]:
        events += parser.feed(text[pos:c])
        pos = c
    return events


@settings(max_examples=150, deadline=None)
@given(st.lists(outline_text, min_size=1, max_size=6), st.data(), st.lists(st.integers(0, 10_000), max_size=12))
def test_render_then_parse_round_trips_in_any_chunking(texts, data, cuts):
    for fmt in (THREADWEAVER, MULTIVERSE):
        outlines = [Outline(str(i + 1), t) for i, t in enumerate(texts)]
        bodies = [data.draw(thread_text) + fmt.thread_close for _ in outlines]
        text = "Q: x\n" + fmt.render_block(outlines, bodies)
        events = feed_in_chunks(PlanParser(fmt), text, cuts)
        assert [e for e in events if isinstance(e, Malformed)] == []
        kinds = [type(e) for e in events]
        assert kinds == [PlanOpened] + [OutlineSeen] * len(texts) + [PlanClosed] + \
            [ThreadClosed] * len(texts) + [BlockClosed]
        plan = next(e.plan for e in events if isinstance(e, PlanClosed))
        assert plan.outlines == tuple(outlines)
        assert [(e.id, e.text) for e in events if isinstance(e, OutlineSeen)] == [(o.id, o.text) for o in outlines]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(THREADWEAVER.tags.all()) + ["1:", "x", "\n", "<", ">", "Outline"]), max_size=60),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_arbitrary_garbage_never_raises(pieces, cuts):
    parser = PlanParser(THREADWEAVER, max_plan_chars=200)
    events = feed_in_chunks(parser, "".join(pieces), cuts)
    for e in events:
        if isinstance(e, PlanClosed):
            assert e.plan.outlines and len({o.id for o in e.plan.outlines}) == len(e.plan.outlines)


def test_plan_close_without_outlines_is_malformed():
    events = PlanParser(THREADWEAVER).feed("<Parallel>\n<Outlines>\n</Outlines>")
    assert isinstance(events[-1], Malformed) and "no outlines" in events[-1].reason


def test_runaway_plan_is_reported_once():
    parser = PlanParser(THREADWEAVER, max_plan_chars=50)
    events = parser.feed("<Outlines>" + "<Outline>1: x</Outline>" * 2)
    events += parser.feed("y" * 100)
    runaway = [e for e in events if isinstance(e, Malformed) and "runaway" in e.reason]
    assert len(runaway) == 1 and not parser.in_plan


def test_close_tags_without_openers_are_malformed():
    events = PlanParser(THREADWEAVER).feed("</Outlines></Parallel>")
    assert [type(e) for e in events] == [Malformed, Malformed]


def test_tag_split_across_chunks_is_held_back():
    parser = PlanParser(THREADWEAVER)
    assert parser.feed("<Parallel>\n<Outli") == []
    events = parser.feed("nes>\n<Outline>1: a</Outl")
    assert any(isinstance(e, PlanOpened) for e in events)
    events = parser.feed("ine>\n</Outlines>")
    assert [type(e) for e in events] == [OutlineSeen, PlanClosed]
