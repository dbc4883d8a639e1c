"""Incremental plan parser: decoded text in, plan events out, as the tokens stream.

``PlanParser.feed(chunk)`` returns the events completed by that chunk. A tag split across
chunks is held back until it is whole. The parser never raises on model output: odd
structure becomes a ``Malformed`` event that says what was wrong, and the job decides
whether to repair or fall back to sequential decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.plan.formats import Plan, PlanFormat


@dataclass(frozen=True)
class PlanOpened:
    offset: int


@dataclass(frozen=True)
class OutlineSeen:
    id: str
    text: str


@dataclass(frozen=True)
class PlanClosed:
    plan: Plan


@dataclass(frozen=True)
class ThreadClosed:
    offset: int


@dataclass(frozen=True)
class BlockClosed:
    offset: int


@dataclass(frozen=True)
class Malformed:
    reason: str


Event = PlanOpened | OutlineSeen | PlanClosed | ThreadClosed | BlockClosed | Malformed


class PlanParser:
    """Feeds on text; ``text`` is everything seen so far."""

    def __init__(self, fmt: PlanFormat, max_plan_chars: int = 4096):
        self.fmt = fmt
        self.max_plan_chars = max_plan_chars
        self.text = ""
        self._scanned = 0  # tags starting before this offset have been handled
        self._plan_at: int | None = None
        self._outlines = 0
        self._depth = 0

    @property
    def in_plan(self) -> bool:
        return self._plan_at is not None

    def feed(self, chunk: str) -> list[Event]:
        self.text += chunk
        events: list[Event] = []
        while (hit := self._next_tag()) is not None:
            pos, tag = hit
            self._scanned = pos + len(tag)
            events.extend(self._on_tag(pos, tag))
        events.extend(self._check_runaway())
        return events

    def _next_tag(self) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for tag in self.fmt.tags.all():
            pos = self.text.find(tag, self._scanned)
            if pos >= 0 and (best is None or pos < best[0] or (pos == best[0] and len(tag) > len(best[1]))):
                best = (pos, tag)
        return best

    def _on_tag(self, pos: int, tag: str) -> list[Event]:
        f = self.fmt.tags
        if tag == f.plan_open:
            if self.in_plan:
                return [Malformed(f"'{tag}' inside an open plan at {pos}")]
            self._plan_at, self._outlines = pos, 0
            self._depth += 1
            return [PlanOpened(pos)]
        if tag == f.plan_close:
            return self._close_plan(pos, tag)
        if tag == f.outline_close and self.in_plan:
            return self._outline_event(pos)
        if tag == f.thread_close:
            return [ThreadClosed(pos)]
        if tag == f.block_close:
            if self._depth == 0:
                return [Malformed(f"'{tag}' with no open block at {pos}")]
            self._depth -= 1
            return [BlockClosed(pos)]
        return []

    def _close_plan(self, pos: int, tag: str) -> list[Event]:
        if not self.in_plan:
            return [Malformed(f"'{tag}' with no open plan at {pos}")]
        plan = self.fmt.find_plan(self.text[:pos + len(tag)])
        self._plan_at = None
        if plan is None or not plan.outlines:
            return [Malformed("plan closed with no outlines")]
        return [PlanClosed(plan)]

    def _outline_event(self, pos: int) -> list[Event]:
        f = self.fmt.tags
        start = self.text.rfind(f.outline_open, self._plan_at or 0, pos)
        if start < 0:
            return [Malformed(f"'{f.outline_close}' with no '{f.outline_open}' at {pos}")]
        self._outlines += 1
        outlines, _ = self.fmt.parse_outlines(self.text[start:pos + len(f.outline_close)])
        o = outlines[0] if outlines else None
        return [OutlineSeen(o.id, o.text)] if o else []

    def _check_runaway(self) -> list[Event]:
        if self.in_plan and len(self.text) - (self._plan_at or 0) > self.max_plan_chars:
            self._plan_at = None
            return [Malformed(f"runaway plan: no '{self.fmt.tags.plan_close}' within {self.max_plan_chars} chars")]
        return []
