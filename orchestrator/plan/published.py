"""The published models' formats, each as its authors' own controller runs it (docs/formats.md
has the sources: the upstream commits read, file by file), and the registry Loom picks from.

- ``threadweaver``: facebookresearch/threadweaver's RL agent loop (``single_turn_agent_loop.py``,
  ``ParallelBranchingController``), which its released scripts run with ``no_conclusion``;
  ``threadweaver-conclusion``: the same loop with its conclusion option on.
- ``multiverse``: the Multiverse engine's scheduler (Multiverse4FM/Multiverse-Engine, SGLang-based).
- ``apr``: Parallel-Reasoning/APR's inference controller (``src/eval``).
"""
from __future__ import annotations

from orchestrator.plan.apr import APRFormat
from orchestrator.plan.formats import Closing, JoinText, PlanFormat, Tags, ThreadContext

TW_TAGS = Tags("<Parallel>", "<Outlines>", "</Outlines>", "<Outline>", "</Outline>", "<Thread>", "</Thread>",
               "</Parallel>", extra=("<think>", "</think>", "<Conclusion>", "</Conclusion>"))

THREADWEAVER = PlanFormat(
    name="threadweaver", tags=TW_TAGS, thread_context=ThreadContext.SHARED, join_text=JoinText.APPEND,
    dedup_outlines=True, max_depth=1,
    header_first="\n<Thread>\n{id}:", header_next="<Thread>\n{id}:",  # no whitespace between threads
    after_block="\n",  # then the model writes </Parallel>
    closing=Closing(unclosed_suffix="\n</Thread>", ends_generation="\n</Parallel>"),
)

THREADWEAVER_CONCLUSION = PlanFormat(
    name="threadweaver-conclusion", tags=TW_TAGS, thread_context=ThreadContext.SHARED,
    join_text=JoinText.APPEND, dedup_outlines=True, max_depth=1,
    header_first="\n<Thread>\n{id}:", header_next="<Thread>\n{id}:", after_block="\n<Conclusion>\n",
    closing=Closing(unclosed_suffix="\n</Thread>", ends_generation="\n<Conclusion>\n</Conclusion>\n</Parallel>"),
)

MULTIVERSE = PlanFormat(
    name="multiverse",
    tags=Tags("<Parallel>", "<Goal>", "</Goal>", "<Outline>", "</Outline>", "<Path>", "</Path>", "</Parallel>",
              extra=("<Think>", "</Think>", "<Conclusion>", "</Conclusion>")),
    thread_context=ThreadContext.SHARED, join_text=JoinText.APPEND,
    dedup_outlines=False,  # the engine forks a path per match, repeated ids too
    max_depth=6,  # the engine refuses a fork once a path's parent stack is deeper than 5
    header_first="\n<Path>\n{id}:", header_next="<Path>\n{id}:",  # paths 2.. lose the header's "\n"
    after_closer="\n",  # the engine's lookahead token after </Path>, "\n" in every well-formed block
    after_block="<Conclusion>\n",
    closing=Closing(drop_last_on_length=True),  # EOS dropped, no closer: the next <Path> follows
)

APR = APRFormat(
    name="apr",
    tags=Tags("", "<Calling Sub Searches>", "<End Calling Sub Searches>", "<Start Sub Search", "", "", "", "",
              extra=("<Sub Searches>", "<End Sub Searches>")),
    thread_context=ThreadContext.FRESH, join_text=JoinText.REWRITE, dedup_outlines=False, max_depth=1,
    header_first="", header_next="",
    stop_guard=("<Sub Searches>", "<Calling Sub Searches>"),  # the model must not write the join itself
    bos_as_text=True,
)

FORMATS: dict[str, PlanFormat] = {f.name: f for f in (THREADWEAVER, THREADWEAVER_CONCLUSION, MULTIVERSE, APR)}


def get_format(name: str) -> PlanFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown plan format {name!r}; known: {', '.join(FORMATS)}") from None
