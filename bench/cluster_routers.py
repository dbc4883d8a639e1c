"""Where a client-side fork/join orchestrator sends each engine request, in bench.cluster: the
two routers a user would put in front of a pool of engines instead of Loom.

- ``RoundRobin``: the next engine, in turn (a plain load balancer).
- ``CacheAware``: SGLang's cache-aware router (sgl-router, ``--policy cache_aware``; Ray Serve
  LLM's ``PrefixCacheAffinityRouter`` is the same idea): an approximate tree per engine of the
  prompts routed to it (not what the engine holds: it never hears from the engines). If the load
  is imbalanced, ``max - min > balance_abs`` and ``max > balance_rel * min`` over the requests
  each engine is running, the least loaded engine; otherwise the engine whose tree matches the
  longest prefix, if that match is more than ``cache_threshold`` of the prompt; otherwise the
  engine with the smallest tree (most cache room). Defaults: sgl-router's (0.3, 64, 1.5). The
  tree here is of prompt blocks (chained keys of ``block_size`` tokens) instead of characters,
  and never evicted (sgl-router's default tree holds 2^26 characters).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.routing.kv_index import block_keys


@dataclass
class RoundRobin:
    workers: list[str]
    turn: int = 0

    def choose(self, ids: list[int]) -> str:
        worker = self.workers[self.turn % len(self.workers)]
        self.turn += 1
        return worker

    def started(self, worker: str) -> None: ...

    def finished(self, worker: str) -> None: ...


@dataclass
class CacheAware:
    workers: list[str]
    block_size: int
    cache_threshold: float = 0.3
    balance_abs: int = 64
    balance_rel: float = 1.5
    trees: dict[str, set[bytes]] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        for w in self.workers:
            self.trees.setdefault(w, set())
            self.running.setdefault(w, 0)

    def choose(self, ids: list[int]) -> str:
        keys = block_keys(ids, self.block_size)
        worker = self._least_loaded() if self._imbalanced() else self._by_prefix(keys)
        self.trees[worker].update(keys)
        return worker

    def started(self, worker: str) -> None:
        self.running[worker] += 1

    def finished(self, worker: str) -> None:
        self.running[worker] -= 1

    def _imbalanced(self) -> bool:
        hi, lo = max(self.running.values()), min(self.running.values())
        return hi - lo > self.balance_abs and hi > self.balance_rel * lo

    def _least_loaded(self) -> str:
        return min(self.workers, key=lambda w: (self.running[w], self.workers.index(w)))

    def _by_prefix(self, keys: list[bytes]) -> str:
        matched = {w: self._leading(w, keys) for w in self.workers}
        best = max(self.workers, key=lambda w: (matched[w], -self.running[w]))
        if keys and matched[best] / len(keys) > self.cache_threshold:
            return best
        return min(self.workers, key=lambda w: (len(self.trees[w]), self.running[w]))

    def _leading(self, worker: str, keys: list[bytes]) -> int:
        tree, n = self.trees[worker], 0
        while n < len(keys) and keys[n] in tree:
            n += 1
        return n
