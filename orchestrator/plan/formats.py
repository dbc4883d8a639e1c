"""Plan formats: how a published model announces a fork, and how its authors' controller answers.

A ``PlanFormat`` is one profile, and every rule in it is the authors' (docs/formats.md cites the
code each comes from):
- the fork trigger: the stop that ends a segment whose plan is complete;
- outline parsing: the ids the authors' regex finds in the plan, duplicates kept or not;
- each thread's prompt: the block's context (``ThreadContext.SHARED``) or a fresh one (APR), then
  the thread's header, and what stops a thread;
- the join: the header each thread gets in the joined text (the first and the others may
  differ), what follows a thread's closer, and what is appended after the last thread;
- the closing rules: what a thread that ended by EOS or by length gets, and whether such a
  thread ends the whole generation;
- nesting, and how deep.
Plain Python, no Ray or vLLM: unit-tested directly, and run against the authors' strings in
tests/test_conformance.py.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from orchestrator.protocol.segment import Finish

OUTLINE_ID = r"<Outline>\s*([0-9]+(?:\.[0-9]+)*)\s*:"  # ThreadWeaver's and Multiverse's controllers alike


class ThreadContext(StrEnum):
    """What a thread's prompt starts from."""

    SHARED = "shared"  # the block's context, then the thread's header: the prefix cache serves the context
    FRESH = "fresh"  # the thread's header alone (APR: a child starts from its node's state)


class JoinText(StrEnum):
    """How the threads' results go back into the context."""

    APPEND = "append"  # each thread's header and tokens, in plan order, after the context
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
    start: int  # offset in the context where the plan's scan began (its last open tag)
    notes: tuple[str, ...] = ()  # what the parse skipped or kept twice, for the record


class Ended(Protocol):
    """A thread as the block's end needs it: how it ended (a ThreadResult, the driver's outcome)."""

    @property
    def finish(self) -> Finish: ...


@dataclass(frozen=True)
class ThreadResult:
    outline: Outline
    text: str  # what the thread generated after its header
    finish: Finish = Finish.STOP


@dataclass(frozen=True)
class Tags:
    block_open: str
    plan_open: str
    plan_close: str  # the fork trigger
    outline_open: str
    outline_close: str
    thread_open: str
    thread_close: str
    block_close: str
    extra: tuple[str, ...] = ()

    def all(self) -> tuple[str, ...]:
        core = (self.block_open, self.plan_open, self.plan_close, self.outline_open, self.outline_close,
                self.thread_open, self.thread_close, self.block_close)
        return tuple(t for t in core + self.extra if t)


@dataclass(frozen=True)
class Closing:
    """What the join does with a thread that did not end on its closer (EOS or length)."""

    unclosed_suffix: str = ""  # appended to its text (ThreadWeaver: "\n</Thread>")
    drop_last_on_length: bool = False  # its last token is dropped (Multiverse's engine keeps output[:-1])
    ends_generation: str | None = None  # appended after the block, which then ends the job (None: go on)


@dataclass(frozen=True)
class PlanFormat:
    name: str
    tags: Tags
    thread_context: ThreadContext
    join_text: JoinText
    dedup_outlines: bool  # drop repeated ids, the first kept (else each forks a thread of its own)
    max_depth: int  # how deep blocks nest (1: a thread never forks)
    header_first: str  # the first thread's header, in its prompt and in the join ({id} replaced)
    header_next: str  # the other threads' header in the join (each thread's prompt has header_first)
    after_closer: str = ""  # what follows a thread's closer in the join (Multiverse: the engine's lookahead)
    after_block: str = ""  # appended after the last thread when every thread closed
    closing: Closing = field(default_factory=Closing)
    stop_guard: tuple[str, str] | None = None  # (a stop the model must not write, what replaces it)
    bos_as_text: bool = False  # the controller writes the BOS as text before each context it sends (APR)

    @property
    def fork_stop(self) -> str:
        return self.tags.plan_close

    @property
    def thread_close(self) -> str:
        return self.tags.thread_close

    @property
    def nesting(self) -> bool:
        return self.max_depth > 1

    # -- plan
    def find_plan(self, context: str) -> Plan | None:
        """The plan whose trigger ends ``context``; None when there is none."""
        if not context.endswith(self.tags.plan_close):
            return None
        start = context.rfind(self.tags.plan_open)
        if start < 0:
            return None
        outlines, notes = self.parse_outlines(context[start:])
        return Plan(self.name, outlines, start, notes)

    def parse_outlines(self, scan: str) -> tuple[tuple[Outline, ...], tuple[str, ...]]:
        """Outlines in plan order, by the authors' regex over ``scan`` (from the plan's open tag)."""
        found = [Outline(m.group(1), _description(scan, m.end(), self.tags)) for m in re.finditer(OUTLINE_ID, scan)]
        notes = [f"{n} outline(s) without a number: no thread (as {self.name}'s controller)"
                 for n in [scan.count(self.tags.outline_open) - len(found)] if n > 0]
        if not self.dedup_outlines:
            return tuple(found), tuple(notes)
        kept: dict[str, Outline] = {}
        for o in found:
            if o.id in kept:
                notes.append(f"duplicate outline id {o.id}: dropped (the first kept, as {self.name}'s controller)")
            kept.setdefault(o.id, o)
        return tuple(kept.values()), tuple(notes)

    def open_blocks(self, text: str) -> int:
        """Blocks opened in ``text`` and not yet closed: a thread that writes a nested block
        itself (its fork refused) closes that block's threads before its own."""
        if not self.tags.block_open:
            return 0
        return text.count(self.tags.block_open) - text.count(self.tags.block_close)

    # -- threads and the join, as text (the driver works in ids: driver/join.py)
    def thread_header(self, outline: Outline) -> str:
        """A thread's header in its prompt (and the first thread's in the join)."""
        return self.header_first.format(id=outline.id)

    def join_header(self, outline: Outline, first: bool) -> str:
        return (self.header_first if first else self.header_next).format(id=outline.id)

    def render_join(self, context: str, plan: Plan, results: list[ThreadResult]) -> str:
        """The joined text: the context, each thread's join header and text (closed as the
        closing rules say), and what follows the block."""
        parts = [context]
        for i, r in enumerate(results):
            parts.append(self.join_header(r.outline, i == 0) + self.closed_text(r))
        return "".join(parts) + self.block_end(results)

    def closed_text(self, r: ThreadResult) -> str:
        if r.finish == Finish.STOP:
            return r.text + self.after_closer
        return r.text + self.closing.unclosed_suffix

    def block_end(self, results: Sequence[Ended]) -> str:
        """What follows the last thread: the format's end of the generation where that ends it."""
        return self.closing.ends_generation if self.ends_generation(results) else self.after_block

    def ends_generation(self, results: Sequence[Ended]) -> bool:
        """A thread that did not end on its closer ends the generation, where the format says so."""
        return self.closing.ends_generation is not None and any(r.finish != Finish.STOP for r in results)

    # -- what a model trained on this format writes (tests, training data)
    def render_plan(self, outlines: list[Outline]) -> str:
        """The block's opening through the fork trigger: what the lane holds when it forks."""
        t = self.tags
        plan = "".join(f"{t.outline_open}{o.id}: {o.text}{t.outline_close}\n" for o in outlines)
        return f"{t.block_open}\n{t.plan_open}\n{plan}{t.plan_close}"

    def render_block(self, outlines: list[Outline], bodies: list[str], after: str = "", conclusion: str = "") -> str:
        """A whole block as the authors' controller joins it and the model goes on: each body is a
        thread's text after its header, closer included; a conclusion, when given, is written in
        ``<Conclusion>`` tags (Multiverse)."""
        results = [ThreadResult(o, b) for o, b in zip(outlines, bodies)]
        joined = self.render_join(self.render_plan(outlines), Plan(self.name, tuple(outlines), 0), results)
        end = f"{conclusion}\n</Conclusion>\n" if conclusion else ""
        return joined + end + f"{self.tags.block_close}\n" + after


def _description(scan: str, at: int, tags: Tags) -> str:
    """An outline's text after its id, to its closer or the next outline (for the record)."""
    ends = [i for i in (scan.find(tags.outline_close, at), scan.find(tags.outline_open, at)) if i >= 0]
    return scan[at:min(ends)].strip() if ends else scan[at:].strip()
