"""The three plan formats: how a model announces a fork, and how Loom answers it.

A ``PlanFormat`` owns everything format-specific (docs/formats.md has the sources):
- the fork trigger: the stop string that ends the main segment when a plan is complete;
- outline parsing: the plan text -> numbered outlines;
- each thread's prompt: appended to the shared prefix (ThreadWeaver, Multiverse) or a fresh
  context (APR);
- the thread's stop string and closer;
- the join: appended to the context (ThreadWeaver, Multiverse) or a rewrite of the plan (APR);
- nesting: whether a thread may open a block of its own.
Plain Python, no Ray or vLLM: unit-tested directly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class ThreadContext(StrEnum):
    """What a thread's prompt starts from."""

    SHARED = "shared"  # the block's context, then the thread's header: the prefix cache serves the context
    FRESH = "fresh"  # the thread's header alone (APR: a child starts from its node's state)


class JoinText(StrEnum):
    """How the threads' results go back into the context."""

    APPEND = "append"  # each thread's header and text, in plan order, after the context
    REWRITE = "rewrite"  # the plan rewritten with the threads' results (APR)


@dataclass(frozen=True)
class Outline:
    id: str
    text: str


@dataclass(frozen=True)
class Plan:
    """A complete plan found at the end of a context."""

    format: str
    outlines: tuple[Outline, ...]
    start: int  # offset in the context where the block opened
    repairs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ThreadResult:
    outline: Outline
    text: str  # what the thread generated after its header, closer excluded
    finish: str = "stop"  # stop | length | cancelled | eos


_OUTLINE_ID = re.compile(r"\s*([0-9]+(?:\.[0-9]+)*)\s*:\s?")


@dataclass(frozen=True)
class PlanFormat:
    name: str
    block_open: str  # the tag that opens a parallel block
    plan_open: str
    plan_close: str  # the fork trigger
    outline_open: str
    outline_close: str
    thread_open: str
    thread_close: str
    block_close: str
    nesting: bool
    thread_context: ThreadContext
    join_text: JoinText
    extra_tags: tuple[str, ...] = field(default=())

    @property
    def fork_stop(self) -> str:
        return self.plan_close

    @property
    def tags(self) -> tuple[str, ...]:
        core = (self.block_open, self.plan_open, self.plan_close, self.outline_open,
                self.outline_close, self.thread_open, self.thread_close, self.block_close)
        return tuple(t for t in core + self.extra_tags if t)

    # -- plan -----------------------------------------------------------------
    def find_plan(self, context: str) -> Plan | None:
        """The plan whose close tag ends ``context``; None when there is none."""
        found = self.plan_body(context)
        if found is None:
            return None
        outlines, repairs = self.parse_outlines(found[1])
        return Plan(self.name, outlines, found[0], repairs)

    def plan_body(self, context: str) -> tuple[int, str] | None:
        """(offset of the plan's open tag, text between open and close) for a plan ending ``context``."""
        if not context.endswith(self.plan_close):
            return None
        start = context.rfind(self.plan_open)
        if start < 0:
            return None
        return start, context[start + len(self.plan_open):len(context) - len(self.plan_close)]

    def parse_outlines(self, body: str) -> tuple[tuple[Outline, ...], tuple[str, ...]]:
        """Outlines in plan order; duplicates dropped, missing ids assigned, each noted."""
        outlines: list[Outline] = []
        repairs: list[str] = []
        seen: set[str] = set()
        for raw in _between(body, self.outline_open, self.outline_close, repairs):
            m = _OUTLINE_ID.match(raw)
            if m:
                oid, text = m.group(1), raw[m.end():]
            else:
                oid, text = str(len(outlines) + 1), raw.strip()
                repairs.append(f"outline without id: assigned {oid}")
            if oid in seen:
                repairs.append(f"duplicate outline id {oid}: dropped")
                continue
            seen.add(oid)
            outlines.append(Outline(oid, text))
        _note_gaps([o.id for o in outlines], repairs)
        return tuple(outlines), tuple(repairs)

    # -- threads --------------------------------------------------------------
    def thread_header(self, outline: Outline) -> str:
        return f"\n{self.thread_open}\n{outline.id}:"

    def open_blocks(self, text: str) -> int:
        """Blocks opened in ``text`` and not yet closed: a thread that writes a nested block
        itself (its fork refused) closes that block's paths before its own."""
        if not self.block_open:
            return 0
        return text.count(self.block_open) - text.count(self.block_close)

    def clean_thread(self, text: str) -> tuple[str, tuple[str, ...]]:
        """Cut a thread at a tag that may not appear inside it (no nesting)."""
        if self.nesting:
            return text, ()
        for tag in (self.block_open, self.plan_open, self.thread_open):
            pos = text.find(tag)
            if pos >= 0:
                return text[:pos], (f"'{tag}' inside a thread of {self.name}: cut there",)
        return text, ()

    # -- join -----------------------------------------------------------------
    def render_join(self, context: str, plan: Plan, results: list[ThreadResult]) -> str:
        """The context the main segment resumes from, threads merged in plan order."""
        parts = [context]
        for r in results:
            parts.append(self.thread_header(r.outline) + r.text + self.thread_close)
        return "".join(parts)

    def render_block(self, outlines: list[Outline], bodies: list[str], after: str = "", conclusion: str = "") -> str:
        """A whole block as the model writes it sequentially (tests, training data); a conclusion,
        when given, closes it in ``<Conclusion>`` tags as Multiverse requires."""
        head = self.render_plan(outlines)
        p = Plan(self.name, tuple(outlines), 0)
        results = [ThreadResult(o, b) for o, b in zip(outlines, bodies)]
        end = f"\n<Conclusion>\n{conclusion}\n</Conclusion>" if conclusion else ""
        return self.render_join(head, p, results) + f"{end}\n{self.block_close}\n" + after

    def render_plan(self, outlines: list[Outline]) -> str:
        """The block's opening through the fork trigger: what the lane holds when it forks."""
        plan = "".join(f"{self.outline_open}{o.id}: {o.text}{self.outline_close}\n" for o in outlines)
        return f"{self.block_open}\n{self.plan_open}\n{plan}{self.plan_close}"


def _between(body: str, open_tag: str, close_tag: str, repairs: list[str]) -> list[str]:
    items, pos = [], 0
    while True:
        s = body.find(open_tag, pos)
        if s < 0:
            return items
        e = body.find(close_tag, s + len(open_tag))
        nxt = body.find(open_tag, s + len(open_tag))
        if e < 0 or (0 <= nxt < e):
            end = nxt if nxt >= 0 else len(body)
            repairs.append(f"unclosed '{open_tag}': closed at the next outline or plan end")
            items.append(body[s + len(open_tag):end].strip())
            pos = end
            continue
        items.append(body[s + len(open_tag):e])
        pos = e + len(close_tag)


def _note_gaps(ids: list[str], repairs: list[str]) -> None:
    tops = sorted(int(i) for i in ids if i.isdigit())
    missing = sorted(set(range(1, (tops[-1] if tops else 0) + 1)) - set(tops))
    if missing:
        repairs.append("missing outline ids " + ",".join(map(str, missing)) + ": kept as written")


@dataclass(frozen=True)
class APRFormat(PlanFormat):
    """APR: children start from fresh contexts and the join rewrites the parent's call."""

    def parse_outlines(self, body: str) -> tuple[tuple[Outline, ...], tuple[str, ...]]:
        outlines = tuple(Outline(m.group(1), m.group(0).strip()) for m in _APR_CALL.finditer(body))
        return outlines, (() if outlines else ("no '<Start Sub Search' line in the call",))

    def thread_header(self, outline: Outline) -> str:
        return outline.text + "\n"

    def render_join(self, context: str, plan: Plan, results: list[ThreadResult]) -> str:
        lines = []
        for r in results:
            found = r.finish in ("stop", "eos") and "Goal Reached" in r.text  # ended by itself
            tag = f"<Goal Reached in Sub Search {r.outline.id}>" if found else \
                f"<No Solution in Sub Search {r.outline.id}>"
            lines.append(tag + ((" " + r.text.strip()) if found else ""))
        body = "\n".join(lines)
        return context[:plan.start] + f"<Sub Searches>\n{body}\n<End Sub Searches>\n"

    def render_block(self, outlines: list[Outline], bodies: list[str], after: str = "") -> str:
        calls = "\n".join(o.text for o in outlines)
        return f"{self.plan_open}\n{calls}\n{self.plan_close}" + after


_APR_CALL = re.compile(r"<Start Sub Search (\d+) at level \d+>[^\n<]*")

THREADWEAVER = PlanFormat(
    name="threadweaver", block_open="<Parallel>", plan_open="<Outlines>",
    plan_close="</Outlines>", outline_open="<Outline>", outline_close="</Outline>",
    thread_open="<Thread>", thread_close="</Thread>", block_close="</Parallel>",
    nesting=False, thread_context=ThreadContext.SHARED, join_text=JoinText.APPEND,
    extra_tags=("<think>", "</think>", "<Conclusion>", "</Conclusion>"),
)

MULTIVERSE = PlanFormat(
    name="multiverse", block_open="<Parallel>", plan_open="<Goal>", plan_close="</Goal>",
    outline_open="<Outline>", outline_close="</Outline>", thread_open="<Path>",
    thread_close="</Path>", block_close="</Parallel>", nesting=True, thread_context=ThreadContext.SHARED,
    join_text=JoinText.APPEND,
    extra_tags=("<Think>", "</Think>", "<Conclusion>", "</Conclusion>"),
)

APR = APRFormat(
    name="apr", block_open="", plan_open="<Calling Sub Searches>",
    plan_close="<End Calling Sub Searches>", outline_open="<Start Sub Search", outline_close="",
    thread_open="", thread_close="", block_close="", nesting=False, thread_context=ThreadContext.FRESH,
    join_text=JoinText.REWRITE,
    extra_tags=("<Sub Searches>", "<End Sub Searches>"),
)

FORMATS: dict[str, PlanFormat] = {f.name: f for f in (THREADWEAVER, MULTIVERSE, APR)}


def get_format(name: str) -> PlanFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown plan format {name!r}; known: {', '.join(FORMATS)}") from None
