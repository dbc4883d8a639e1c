"""One segment of a job on the engines: what the driver asks its engine client
(``SegmentRequest``), what it gets back (``SegmentResult``), and what the engine client saw on the
way (``Progress``: where it ran, ``Placement``, and where its prompt's KV came from,
``PrefixOrigin``). The engine client spends the segment's tokens from a lease the driver opened
(``TokenSpender``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from orchestrator.protocol.fork import ForkAdvice, ForkQuery


class Finish(StrEnum):
    """How a segment (a DAG node, a job's main lane) ended."""

    EOS = "eos"
    STOP = "stop"  # on a stop string
    LENGTH = "length"
    BUDGET = "budget"  # out of tokens or past the deadline
    CANCELLED = "cancelled"
    FAILED = "failed"

    @classmethod
    def of_engine(cls, reason: str | None, stop_reason: str | None) -> Finish:
        """vLLM's finish reason (stop | length | abort) and stop string as a segment's finish."""
        if reason == "length":
            return cls.LENGTH
        if reason == "abort":
            return cls.CANCELLED
        return cls.EOS if reason == "stop" and not stop_reason else cls.STOP


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class SegmentRequest:
    """One segment to generate: the driver's request to its engine client."""

    job_id: str
    node_id: int
    prompt_ids: list[int]
    max_tokens: int
    stops: list[str]
    sampling: Sampling
    on_tokens: Callable[[list[int]], None] | None = None  # streamed ids, as they come

    @property
    def streamed(self) -> bool:
        """Someone reads its tokens as they come (else it may run quiet: GenRequest.quiet)."""
        return self.on_tokens is not None


@dataclass
class SegmentResult:
    token_ids: list[int]
    finish: Finish  # eos | stop | length
    stop_reason: str | None = None  # the stop string that ended it, when finish is stop


@dataclass
class Placement:
    """Where a request runs, and the numbers that chose it (the record keeps this per node)."""

    worker: str
    reason: str = ""
    costs: dict[str, float] = field(default_factory=dict)  # worker -> estimated seconds
    matched: dict[str, int] = field(default_factory=dict)  # worker -> leading prompt tokens its cache holds (KV index)
    by: str = ""  # the placer that chose (host:pid of an ingress replica or driver)
    source: str = ""  # a peer to pull the prompt's leading KV from ("": use what the worker holds)
    pull_tokens: int = 0  # prompt tokens to pull from ``source``
    pull_costs: dict[str, float] = field(default_factory=dict)  # worker -> estimated seconds, pulling
    decided_ms: float = 0.0  # the placer's time to choose (wall clock)
    decided_cpu_ms: float = 0.0  # the CPU its thread spent choosing (no waits for locks or cores)

    @property
    def matched_tokens(self) -> int:
        """Leading prompt tokens the index said the chosen worker held."""
        return self.matched.get(self.worker, 0)


class PrefixSource(StrEnum):
    LOCAL = "local"  # the worker's prefix cache held it
    PULLED = "pulled"  # from a peer worker's cache
    RECOMPUTED = "recomputed"


@dataclass
class PrefixOrigin:
    """Where a request's prompt KV came from: ``local``, ``pulled`` (from ``worker``, ``blocks``
    blocks, ``bytes`` bytes in ``ms``), or ``recomputed`` (and why)."""

    source: PrefixSource
    tokens: int = 0  # prompt tokens it covered (cached, pulled, or recomputed)
    worker: str = ""
    blocks: int = 0
    bytes: int = 0
    ms: float = 0.0
    reason: str = ""


@dataclass
class Attempt:
    """An attempt at a request lost with its worker (the request was placed again)."""

    worker: str
    tokens: int
    error: str


@dataclass
class Progress:
    """A request's progress, kept up to date while it streams (so a cancelled one still counts)."""

    placement: Placement | None = None
    tokens: int = 0
    cached_tokens: int = 0
    started: float = 0.0
    first_token: float = 0.0
    ended: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    prefix: PrefixOrigin | None = None
    hold_s: float = 0.0  # the round trip that pinned the prefix on its holder (a pull's first part)


class DeadlineReached(Exception):
    """The engine client stopped a quiet request at the job's deadline."""


class TokenSpender(Protocol):
    """A segment's token lease as the engine client spends it (budget/lease.py: TokenLease)."""

    def covers(self, n: int) -> bool: ...
    def seconds_left(self) -> float: ...
    def charge(self, n: int) -> None: ...
    async def spend(self, n: int) -> None: ...


class EngineClient(Protocol):
    """The engines as the job driver sees them: one segment placed, streamed and charged."""

    async def generate(self, call: SegmentRequest, lease: TokenSpender, progress: Progress) -> SegmentResult: ...
    async def fork_width(self, query: ForkQuery) -> ForkAdvice: ...
