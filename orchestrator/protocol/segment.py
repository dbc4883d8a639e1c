"""One segment of a job on the engines: what the driver asks its engine client (``Decode``),
what it gets back (``Decoded``), and what the engine client saw on the way (``Progress``:
where it ran, ``Placement``, and where its prompt's KV came from, ``PrefixOrigin``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Decode:
    """One segment to decode: the driver's request to its engine client."""

    job_id: str
    node_id: int
    prompt_ids: list[int]
    max_tokens: int
    stops: list[str]
    sampling: Sampling
    on_tokens: Callable[[list[int]], None] | None = None  # streamed ids, as they come


@dataclass
class Placement:
    """Where a request ran, and the numbers that chose it (the record keeps this per node)."""

    worker: str
    reason: str = ""
    costs: dict[str, float] = field(default_factory=dict)  # worker -> estimated seconds
    held: dict[str, int] = field(default_factory=dict)  # worker -> leading prompt tokens it held
    by: str = ""  # the placer that chose (host:pid of an ingress replica or driver)
    source: str = ""  # a peer to pull the prompt's leading KV from ("": use what the worker holds)
    pull_tokens: int = 0  # prompt tokens to pull from ``source``
    pull_costs: dict[str, float] = field(default_factory=dict)  # worker -> estimated seconds, pulling

    @property
    def held_tokens(self) -> int:
        """Leading prompt tokens the index said the chosen worker held."""
        return self.held.get(self.worker, 0)


@dataclass
class PrefixOrigin:
    """Where a request's prompt KV came from: ``local`` (the worker's cache held it), ``pulled``
    (from ``worker``, ``blocks`` blocks, ``bytes`` bytes in ``ms``), or ``recomputed`` (and why)."""

    source: str
    tokens: int = 0  # prompt tokens it covered (cached, pulled, or recomputed)
    worker: str = ""
    blocks: int = 0
    bytes: int = 0
    ms: float = 0.0
    reason: str = ""


@dataclass
class Progress:
    """A request's progress, kept up to date while it streams (so a cancelled one still counts)."""

    placement: Placement | None = None
    tokens: int = 0
    cached_tokens: int = 0
    started: float = 0.0
    first_token: float = 0.0
    ended: float = 0.0
    attempts: list[dict] = field(default_factory=list)  # earlier attempts lost with their worker
    prefix: PrefixOrigin | None = None
    hold_s: float = 0.0  # the round trip that pinned the prefix on its holder (a pull's first part)


@dataclass
class Decoded:
    token_ids: list[int]
    finish: str  # eos | stop | length
    stop_reason: str | None = None  # the stop string that ended it, when finish is stop


class EngineClient(Protocol):
    """The engines as the job driver sees them: one segment placed, streamed and charged."""

    async def decode(self, call: Decode, progress: Progress) -> Decoded: ...
