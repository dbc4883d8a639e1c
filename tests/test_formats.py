"""The format profiles' rules, one by one, as text (plan/formats.py, plan/published.py,
plan/apr.py); tests/test_conformance.py runs them through the driver against the authors' strings."""
import pytest

from orchestrator.plan.apr import node_states, search_result
from orchestrator.plan.formats import Outline, Plan, ThreadContext, ThreadResult
from orchestrator.plan.published import APR, MULTIVERSE, THREADWEAVER, THREADWEAVER_CONCLUSION, get_format
from orchestrator.protocol.segment import Finish

TW_PLAN = "<Parallel>\n<Outlines>\n<Outline>1: add 2 and 3</Outline>\n<Outline>2: add 4 and 5</Outline>\n</Outlines>"


def tw_join(*results: ThreadResult, fmt=THREADWEAVER) -> str:
    plan = fmt.find_plan("Q\n" + TW_PLAN)
    return fmt.render_join("Q\n" + TW_PLAN, plan, list(results))


def test_threadweaver_plan_ids_by_its_regex_from_the_last_outlines():
    plan = THREADWEAVER.find_plan("old <Outlines><Outline>9: x</Outline></Outlines> then\n" + TW_PLAN)
    assert [o.id for o in plan.outlines] == ["1", "2"] and plan.notes == ()
    assert [o.text for o in plan.outlines] == ["add 2 and 3", "add 4 and 5"]
    assert THREADWEAVER.find_plan("Q\n" + TW_PLAN + "\n") is None


@pytest.mark.parametrize("body,ids", [
    ("<Outline> 1.1 : a<Outline>1.2: b<Outline>01: c<Outline>1. d<Outline>Step 3: e<Outline>\n4\n:f",
     ["1.1", "1.2", "01", "4"]),  # dotted, spaced and zero-padded ids match; "1." and "Step 3:" do not
    ("<Outline>1: a</Outline><Outline>1: again</Outline><Outline>2: b</Outline>", ["1", "2"]),
])
def test_threadweaver_outlines_skip_unnumbered_ones_and_keep_the_first_of_a_repeated_id(body, ids):
    outlines, notes = THREADWEAVER.parse_outlines("<Outlines>" + body)
    assert [o.id for o in outlines] == ids and notes


def test_multiverse_keeps_repeated_ids_each_its_own_path():
    outlines, notes = MULTIVERSE.parse_outlines("<Goal>\n<Outline>\n1: a\n</Outline>\n<Outline>\n1: b\n</Outline>\n</Goal>")
    assert [o.id for o in outlines] == ["1", "1"] and notes == ()


def test_threadweaver_join_has_no_whitespace_between_threads_and_a_newline_after_the_last():
    plan = THREADWEAVER.find_plan("Q\n" + TW_PLAN)
    joined = tw_join(ThreadResult(plan.outlines[0], " 2+3=5\n</Thread>"), ThreadResult(plan.outlines[1], " 4+5=9\n</Thread>"))
    assert joined == "Q\n" + TW_PLAN + "\n<Thread>\n1: 2+3=5\n</Thread><Thread>\n2: 4+5=9\n</Thread>\n"
    assert THREADWEAVER.thread_header(plan.outlines[1]) == "\n<Thread>\n2:"  # its prompt's header keeps the newline
    assert THREADWEAVER.thread_context == ThreadContext.SHARED and not THREADWEAVER.nesting


def test_a_threadweaver_thread_ended_by_eos_or_length_is_closed_and_ends_the_generation():
    plan = THREADWEAVER.find_plan("Q\n" + TW_PLAN)
    results = [ThreadResult(plan.outlines[0], " 2+3=5\n</Thread>"), ThreadResult(plan.outlines[1], " 4+5", Finish.EOS)]
    assert tw_join(*results).endswith("<Thread>\n2: 4+5\n</Thread>\n</Parallel>") and THREADWEAVER.ends_generation(results)
    assert tw_join(*results, fmt=THREADWEAVER_CONCLUSION).endswith("\n</Thread>\n<Conclusion>\n</Conclusion>\n</Parallel>")


def test_multiverse_join_keeps_path_one_header_whole_and_appends_the_conclusion_opener():
    ctx = "<Parallel>\n<Goal>\n<Outline>\n1: a\n</Outline>\n<Outline>\n2: b\n</Outline>\n</Goal>"
    plan = MULTIVERSE.find_plan(ctx)
    joined = MULTIVERSE.render_join(ctx, plan, [ThreadResult(plan.outlines[0], " x</Path>"),
                                                ThreadResult(plan.outlines[1], " y</Path>")])
    assert joined == ctx + "\n<Path>\n1: x</Path>\n<Path>\n2: y</Path>\n<Conclusion>\n"
    eos = MULTIVERSE.render_join(ctx, plan, [ThreadResult(plan.outlines[0], " x", Finish.EOS),
                                             ThreadResult(plan.outlines[1], " y</Path>")])
    assert eos == ctx + "\n<Path>\n1: x<Path>\n2: y</Path>\n<Conclusion>\n"  # no closer, nothing ends
    assert not MULTIVERSE.ends_generation([ThreadResult(plan.outlines[0], " x", Finish.EOS)])


def test_multiverse_dotted_ids_and_its_engines_depth():
    ctx = "<Parallel>\n<Goal>\n<Outline>2.1: x</Outline>\n<Outline>2.2: y</Outline>\n</Goal>"
    plan = MULTIVERSE.find_plan(ctx)
    assert [o.id for o in plan.outlines] == ["2.1", "2.2"]
    assert MULTIVERSE.thread_header(plan.outlines[0]) == "\n<Path>\n2.1:" and MULTIVERSE.max_depth == 6


PARENT = ("Moving to Node #0\nCurrent State: 24:[4, 6, 1], Operations: []\n"
          "Exploring Operation: 4*6=24, Resulting Numbers: [1, 24]\nGenerated Node #0,0: 24:[1, 24] Operation: 4*6=24\n"
          "Exploring Operation: 6-1=5, Resulting Numbers: [4, 5]\nGenerated Node #0,1: 24:[4, 5] Operation: 6-1=5\n"
          "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,1\n"
          "<Start Sub Search 1 at level 1> Moving to Node #0,0\n<End Calling Sub Searches>")


def test_apr_children_start_from_the_state_the_parent_wrote_in_spawn_order():
    plan = APR.find_plan(PARENT)
    assert [APR.thread_header(o) for o in plan.outlines] == [
        "Moving to Node #0,1\nCurrent State: 24:[4, 5], Operations: ['6-1=5']",
        "Moving to Node #0,0\nCurrent State: 24:[1, 24], Operations: ['4*6=24']"]
    assert APR.thread_context == ThreadContext.FRESH and APR.bos_as_text


def test_apr_state_from_a_moving_and_current_state_pair_wins_over_a_generated_line():
    text = "Moving to Node #0,1\nCurrent State: 9:[3, 3], Operations: ['a', 'b']\nGenerated Node #0,1: 9:[1, 1] Operation: c\n"
    assert node_states(text)["0,1"].prompt() == "Moving to Node #0,1\nCurrent State: 9:[3, 3], Operations: ['a', 'b']"


def test_apr_join_rewrites_the_call_with_each_childs_line_and_a_solved_childs_path():
    plan = APR.find_plan(PARENT)
    solved = ("\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n"
              "Moving to Node #0,0\nCurrent State: 24:[1, 24]\n24,24 equal: Goal Reached\n")
    joined = APR.render_join(PARENT, plan, [ThreadResult(plan.outlines[0], "\nNo solution found.\n"),
                                            ThreadResult(plan.outlines[1], solved)])
    assert joined == PARENT[:PARENT.index("<Calling Sub Searches>\n")] + (
        "<Sub Searches>\n<No Solution in Sub Search 0 at level 1 at Node #0,1>\n"
        "<Goal Reached in Sub Search 1 at level 1 at Node #0,0>\nMoving to Node #0,0\nCurrent State: 24:[1, 24]\n"
        "24,24 equal: Goal Reached\n<End Sub Searches>\n")


def test_apr_search_result_is_what_follows_the_second_to_last_goal_line():
    assert search_result("a Goal Reached\nb\nc Goal Reached\n") == "b\nc Goal Reached"
    assert search_result("only one Goal Reached\n") is None


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match="threadweaver"):
        get_format("nope")
    assert Plan("apr", (), 0).notes == () and Outline("1", "x").id == "1"
