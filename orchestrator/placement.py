"""Placement: which worker runs a segment or thread. Plain Python, no Ray.

A ``PrefixIndex`` keyed by token blocks (SGLang's radix idea, flattened to block hashes)
answers "how many leading tokens of this prompt does each worker already hold". Workers
are ranked by cached prefix tokens minus a load penalty; the penalty is the prefill cost
of the prompt tokens a worker would recompute plus the decode work it has queued.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BLOCK = 32  # tokens per block: Loom's engine default (EngineConfig.block_size)


def block_hashes(ids: list[int], block: int = BLOCK) -> list[int]:
    """Chained hashes of the full blocks of ``ids`` (a block's hash covers its whole prefix)."""
    out, h = [], 0
    for i in range(0, len(ids) - len(ids) % block, block):
        h = hash((h, tuple(ids[i:i + block])))
        out.append(h)
    return out


@dataclass
class PrefixIndex:
    held: dict[str, set[int]] = field(default_factory=dict)  # worker -> block hashes
    block: int = BLOCK

    def record(self, worker: str, ids: list[int]) -> None:
        self.held.setdefault(worker, set()).update(block_hashes(ids, self.block))

    def cached_tokens(self, worker: str, ids: list[int]) -> int:
        held = self.held.get(worker, set())
        n = 0
        for h in block_hashes(ids, self.block):
            if h not in held:
                break
            n += self.block
        return n

    def forget(self, worker: str) -> None:
        self.held.pop(worker, None)


@dataclass
class Placement:
    workers: list[str]
    index: PrefixIndex = field(default_factory=PrefixIndex)
    active: dict[str, int] = field(default_factory=dict)  # requests running per worker
    queued_tokens_per_request: int = 256

    def choose(self, ids: list[int]) -> str:
        if not self.workers:
            raise RuntimeError("no workers to place on")
        return max(self.workers, key=lambda w: (self.score(w, ids), -self.workers.index(w)))

    def score(self, worker: str, ids: list[int]) -> int:
        recompute = len(ids) - self.index.cached_tokens(worker, ids)
        return -(recompute + self.active.get(worker, 0) * self.queued_tokens_per_request)

    def started(self, worker: str, ids: list[int]) -> None:
        self.active[worker] = self.active.get(worker, 0) + 1
        self.index.record(worker, ids)

    def finished(self, worker: str, ids: list[int]) -> None:
        self.active[worker] = max(0, self.active.get(worker, 0) - 1)
        self.index.record(worker, ids)
