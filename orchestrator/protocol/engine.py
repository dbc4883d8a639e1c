"""A worker's engine as the driver side sees it: where it publishes KV events and serves
requests, how fast it is (measured at start-up), how loaded it is now.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

KV_EVENTS_END_SEQ = (-1).to_bytes(8, "big", signed=True)  # a KV event publisher's end-of-replay marker


@dataclass(frozen=True)
class KVEndpoints:
    """Where a worker's engine publishes its KV events."""

    publish: str  # tcp://host:port (PUB)
    replay: str  # tcp://host:port (ROUTER)


@dataclass(frozen=True)
class StreamEndpoint:
    """Where a worker serves its engine's requests (orchestrator/protocol/wire.py), and the token a
    connection must present."""

    host: str
    port: int
    token: str


@dataclass(frozen=True)
class EngineProfile:
    """An engine's speed, measured by its worker at start-up, and how many sequences it decodes at once."""

    prefill_s_per_token: float
    decode_step_s: dict[int, float]  # batch size -> seconds per decode step (measured points)
    request_s: float = 0.0  # what a request costs besides its prompt's tokens (into the engine, its first step, out)
    max_seqs: int = 0  # the most sequences it decodes at once (max_num_seqs); 0: no cap known

    def token_s(self, load: int) -> float:
        """Seconds a sequence takes per token with ``load`` sequences in the engine: a decode step
        at that batch, or, past ``max_seqs``, the step at ``max_seqs`` stretched by the share of
        the time a sequence waits for a slot."""
        if self.max_seqs and load > self.max_seqs:
            return self.step_s(self.max_seqs) * load / self.max_seqs
        return self.step_s(load)

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
class StepSample:
    """One engine step as the engine timed it (vLLM: its iteration stats): the requests it
    decoded, the prompt tokens it prefilled, its seconds (the decoded requests' median time since
    their previous token; 0 when it decoded none) and the median time to first token of the
    requests it prefilled (from their arrival at the engine; 0: none)."""

    decoding: int
    prefilled: int
    seconds: float
    first_token_s: float = 0.0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker tells the engine client once its engine is up."""

    name: str
    kv: KVEndpoints
    stream: StreamEndpoint
    profile: EngineProfile
    block_size: int
    kv_bytes_per_token: int = 0  # KV bytes one token takes in this engine (all layers)
