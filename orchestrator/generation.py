"""The values that cross the seam between the job driver and the engines, and between the
engine client and the worker actors: both sides import this module, neither imports the other.

- ``GenRequest`` / ``GenChunk``: one engine request and its streamed deltas (worker <-> client);
- ``Decode`` / ``Decoded``: what the job driver asks of its engine client and what it gets back;
- ``Placement``: where a request ran and why (recorded per DAG node).
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class GenRequest:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None
    top_p: float = 1.0
    trace: dict = field(default_factory=dict)  # W3C carrier of the caller's span
    ignore_eos: bool = False  # the worker's start-up profile decodes a fixed number of tokens


@dataclass
class GenChunk:
    request_id: str
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort
    stop_reason: str | None = None  # the stop string that matched
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float = 0.0  # engine-side wall clock, seconds
    finished_at: float = 0.0


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

    @property
    def held_tokens(self) -> int:
        """Leading prompt tokens the index said the chosen worker held."""
        return self.held.get(self.worker, 0)


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


@dataclass
class Decoded:
    token_ids: list[int]
    finish: str  # eos | stop | length
    stop_reason: str | None = None  # the stop string that ended it, when finish is stop


@dataclass(frozen=True)
class KVEndpoints:
    """Where a worker's engine publishes its KV events."""

    publish: str  # tcp://host:port (PUB)
    replay: str  # tcp://host:port (ROUTER)


@dataclass(frozen=True)
class EngineProfile:
    """An engine's speed, measured by its worker at start-up."""

    prefill_s_per_token: float
    decode_step_s: dict[int, float]  # batch size -> seconds per decode step (measured points)

    def step_s(self, batch: int) -> float:
        """Seconds per decode step at ``batch``: linear between the measured points, and on the
        last segment's slope beyond them."""
        sizes = sorted(self.decode_step_s)
        if len(sizes) == 1:
            return self.decode_step_s[sizes[0]]
        i = min(max(bisect.bisect_left(sizes, batch), 1), len(sizes) - 1)
        b0, b1 = sizes[i - 1], sizes[i]
        s0, s1 = self.decode_step_s[b0], self.decode_step_s[b1]
        return max(s0 + (s1 - s0) * (batch - b0) / (b1 - b0), 0.0)


@dataclass(frozen=True)
class EngineLoad:
    """An engine's load, as its worker reports it."""

    active: int = 0  # requests in the engine (running or waiting)
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of KV blocks in use


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker tells the engine client once its engine is up."""

    name: str
    kv: KVEndpoints
    profile: EngineProfile
    block_size: int
