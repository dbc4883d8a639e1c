"""KV transfer values both sides see: a holder's ask to keep a prefix's blocks (``HoldRequest``),
the blocks it keeps for a peer (``KVHold``), the report of a pull (``PullReport``), and the keys
under which they travel in vLLM's ``kv_transfer_params`` (plain dicts there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

HOLD_KEY = "loom_hold"  # in a holder request's params: a HoldRequest; in its finished output: a KVHold
PULL_KEY = "loom_pull"  # in a target request's params: a KVHold to pull from
PULLED_KEY = "loom_pulled"  # in a finished target request's params: its PullReport


@dataclass
class HoldRequest:
    """Keep the blocks of the prompt's first ``tokens`` tokens for a peer, ``hold_s`` seconds
    (None: the engine's ``kv_hold_s``)."""

    tokens: int
    hold_s: float | None = None

    def to_params(self) -> dict:
        return {HOLD_KEY: asdict(self)}

    @classmethod
    def from_params(cls, params: dict) -> HoldRequest | None:
        ask = params.get(HOLD_KEY)
        return cls(**ask) if ask is not None else None


@dataclass
class KVHold:
    """Blocks a holder keeps for a target to pull (returned by the holder's request)."""

    holder: str  # the holder engine's name
    host: str  # its side channels' address
    ports: list[int]  # one side channel per tensor-parallel rank, in rank order
    transfer: str  # the holder's request id: names the held blocks
    block_ids: list[int]  # the holder's blocks, in prompt order, full blocks only
    num_tokens: int  # tokens those blocks hold (block-aligned)
    block_bytes: int  # bytes one block takes over all layers and ranks
    expires_in_s: float

    def to_params(self) -> dict:
        return {PULL_KEY: asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> KVHold:
        return cls(**d)


@dataclass
class PullReport:
    """What became of one pull, as the target's connector saw it (the job record keeps it). An
    engine over several GPUs pulls each rank's shard on its own: ``combine`` makes one report."""

    holder: str
    blocks: int
    bytes: int
    ms: float
    ok: bool
    error: str = ""

    def combine(self, shard: PullReport) -> PullReport:
        """This pull with another rank's shard of it: every byte, the slowest rank's time, ok
        only if every shard was."""
        errors = "; ".join(e for e in (self.error, shard.error) if e)
        return PullReport(self.holder, max(self.blocks, shard.blocks), self.bytes + shard.bytes,
                          max(self.ms, shard.ms), self.ok and shard.ok, errors)
