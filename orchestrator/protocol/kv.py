"""KV transfer values both sides see: the blocks a holder keeps for a peer (``KVHold``), the
report of a pull (``PullReport``), and the keys under which they travel in vLLM's
``kv_transfer_params``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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
