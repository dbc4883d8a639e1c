"""The values that cross the seam between the job driver and the engines, and between the
engine client and the worker actors: both sides import this module, neither imports the other.

- ``GenRequest`` / ``GenChunk``: one engine request and its streamed deltas (worker <-> client);
- ``Decode`` / ``Decoded``: what the job driver asks of its engine client and what it gets back;
- ``Placement``: where a request ran and why (recorded per DAG node).
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


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
    kv_params: dict | None = None  # vLLM kv_transfer_params: hold blocks for a peer, or pull from one
    quiet: bool = False  # the caller needs only the first tokens and the end (stream_batch.held)


def request_id(job_id: str, node_id: int, prompt_tokens: int, attempt: int = 0) -> str:
    """The engine request a DAG node's ``attempt`` runs as (a worker's request log is keyed by it)."""
    retry = f"-r{attempt}" if attempt else ""
    return f"{job_id}-n{node_id}-{prompt_tokens}{retry}"


@dataclass
class GenChunk:
    request_id: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort
    stop_reason: str | None = None  # the stop string that ended the request (None: EOS, length, abort)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float = 0.0  # engine-side wall clock, seconds
    finished_at: float = 0.0
    kv_params: dict | None = None  # the finished request's kv_transfer_params (a hold, a pull's report)


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


@dataclass(frozen=True)
class KVEndpoints:
    """Where a worker's engine publishes its KV events."""

    publish: str  # tcp://host:port (PUB)
    replay: str  # tcp://host:port (ROUTER)


@dataclass(frozen=True)
class StreamEndpoint:
    """Where a worker serves its engine's requests (orchestrator/wire.py), and the token a
    connection must present."""

    host: str
    port: int
    token: str


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
    stream: StreamEndpoint
    profile: EngineProfile
    block_size: int
    kv_bytes_per_token: int = 0  # KV bytes one token takes in this engine (all layers)


HOLD_KEY = "loom_hold"  # in a holder request's params: {"tokens": n, "hold_s": s or None} to keep for a peer
PULL_KEY = "loom_pull"  # in a target request's params: a KVHold to pull from
PULLED_KEY = "loom_pulled"  # in a finished target request's params: its PullReport


@dataclass
class KVHold:
    """Blocks a holder keeps for a target to pull (returned by the holder's request)."""

    holder: str  # the holder engine's name
    host: str  # its side channel
    port: int
    transfer: str  # the holder's request id: names the held blocks
    block_ids: list[int]  # the holder's blocks, in prompt order, full blocks only
    num_tokens: int  # tokens those blocks hold (block-aligned)
    block_bytes: int  # bytes one block takes over all layers
    expires_in_s: float

    def to_params(self) -> dict:
        return {PULL_KEY: asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> KVHold:
        return cls(**d)


@dataclass
class PullReport:
    """What became of one pull, as the target's connector saw it (the job record keeps it)."""

    holder: str
    blocks: int
    bytes: int
    ms: float
    ok: bool
    error: str = ""
