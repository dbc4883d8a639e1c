import pytest

from orchestrator.plan.formats import APR, MULTIVERSE, THREADWEAVER, Outline, ThreadContext, ThreadResult, get_format

TW_BLOCK = ("<Parallel>\n<Outlines>\n<Outline>1: add 2 and 3</Outline>\n<Outline>2: add 4 and 5</Outline>\n"
            "</Outlines>\n<Thread>\n1: 2+3=5</Thread>\n<Thread>\n2: 4+5=9</Thread>\n</Parallel>\n")


def test_threadweaver_render_matches_literal_block():
    outlines = [Outline("1", "add 2 and 3"), Outline("2", "add 4 and 5")]
    assert THREADWEAVER.render_block(outlines, [" 2+3=5", " 4+5=9"]) == TW_BLOCK


def test_threadweaver_plan_found_at_fork_point():
    context = "Q\n" + TW_BLOCK[:TW_BLOCK.index("</Outlines>") + len("</Outlines>")]
    plan = THREADWEAVER.find_plan(context)
    assert [o.id for o in plan.outlines] == ["1", "2"]
    assert [o.text for o in plan.outlines] == ["add 2 and 3", "add 4 and 5"]
    assert plan.repairs == ()
    assert THREADWEAVER.find_plan(context + "\n") is None


def test_thread_prompt_and_join_are_format_exact():
    context = "Q\n" + TW_BLOCK[:TW_BLOCK.index("</Outlines>") + len("</Outlines>")]
    plan = THREADWEAVER.find_plan(context)
    assert THREADWEAVER.thread_header(plan.outlines[1]) == "\n<Thread>\n2:"
    assert THREADWEAVER.thread_context == ThreadContext.SHARED
    joined = THREADWEAVER.render_join(context, plan, [ThreadResult(plan.outlines[0], " 2+3=5"),
                                                      ThreadResult(plan.outlines[1], " 4+5=9")])
    assert joined + "\n</Parallel>\n" == "Q\n" + TW_BLOCK


def test_duplicate_missing_and_unnumbered_outlines_are_repaired_and_noted():
    body = "<Outline>1: a</Outline><Outline>1: again</Outline><Outline>3: c</Outline><Outline>no id</Outline>"
    outlines, repairs = THREADWEAVER.parse_outlines(body)
    ids = [o.id for o in outlines]
    assert ids[:2] == ["1", "3"] and len(set(ids)) == len(ids)
    assert any("duplicate outline id 1" in r for r in repairs)
    assert any("missing outline ids 2" in r for r in repairs)
    assert any("without id" in r for r in repairs)


def test_unclosed_outline_is_closed_at_next_outline():
    outlines, repairs = THREADWEAVER.parse_outlines("<Outline>1: a\n<Outline>2: b</Outline>")
    assert [(o.id, o.text) for o in outlines] == [("1", "a"), ("2", "b")]
    assert any("unclosed" in r for r in repairs)


def test_dotted_ids_for_nested_multiverse_plans():
    ctx = "<Parallel>\n<Goal>\n<Outline>2.1: x</Outline>\n<Outline>2.2: y</Outline>\n</Goal>"
    plan = MULTIVERSE.find_plan(ctx)
    assert [o.id for o in plan.outlines] == ["2.1", "2.2"]
    assert MULTIVERSE.thread_header(plan.outlines[0]) == "\n<Path>\n2.1:"
    assert MULTIVERSE.nesting and not THREADWEAVER.nesting


def test_tags_inside_a_thread_without_nesting_are_cut():
    text, notes = THREADWEAVER.clean_thread(" work <Parallel> more")
    assert text == " work " and notes
    assert MULTIVERSE.clean_thread(" work <Parallel> more") == (" work <Parallel> more", ())


def test_apr_spawn_and_rewrite_join():
    ctx = ("Moving to Node #0\n<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n"
           "<Start Sub Search 1 at level 1> Moving to Node #0,1\n<End Calling Sub Searches>")
    plan = APR.find_plan(ctx)
    assert [o.id for o in plan.outlines] == ["0", "1"]
    assert APR.thread_header(plan.outlines[1]) == "<Start Sub Search 1 at level 1> Moving to Node #0,1\n"
    assert APR.thread_context == ThreadContext.FRESH
    joined = APR.render_join(ctx, plan, [ThreadResult(plan.outlines[0], "Goal Reached 1+2=3"),
                                         ThreadResult(plan.outlines[1], "dead end")])
    assert joined.startswith("Moving to Node #0\n<Sub Searches>\n<Goal Reached in Sub Search 0> Goal Reached 1+2=3")
    assert "<No Solution in Sub Search 1>" in joined and joined.endswith("<End Sub Searches>\n")
    assert "<Calling Sub Searches>" not in joined


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match="threadweaver"):
        get_format("nope")
