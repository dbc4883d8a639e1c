"""A simulated engine's KV blocks: a prefix cache of hashed full blocks, LRU eviction, and the
events vLLM's block pool publishes for them.

Like vLLM's: a full block is cached under a hash chained over its parent's hash and its tokens,
so equal prefixes share blocks; a block in use by a request is never evicted; a freed request's
blocks join the free queue tail first (its last block is evicted first); a block is taken from
the queue's head when a new one is needed and none was ever used. A request's blocks are a
``BlockTable``: the cached full blocks, then at most one partial block of its own.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    STORED = "BlockStored"
    REMOVED = "BlockRemoved"
    CLEARED = "AllBlocksCleared"


@dataclass(frozen=True)
class CacheEvent:
    kind: EventKind
    block_hashes: list[int] = field(default_factory=list)
    parent_block_hash: int | None = None
    token_ids: list[int] = field(default_factory=list)


@dataclass
class Block:
    hash: int
    parent: int | None
    tokens: list[int]
    refs: int = 0


@dataclass
class BlockTable:
    """A request's blocks: ``hashes`` of its full blocks (cached, referenced), then whether it
    holds a partial block."""

    hashes: list[int] = field(default_factory=list)
    partial: bool = False


def chain_hash(parent: int | None, tokens: list[int]) -> int:
    h = hashlib.blake2b((parent or 0).to_bytes(8, "little"), digest_size=8)
    h.update(b"".join(t.to_bytes(4, "little", signed=True) for t in tokens))
    return int.from_bytes(h.digest(), "little") >> 1  # a positive int64 (msgpack, vLLM's type)


class BlockCache:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks: dict[int, Block] = {}  # every cached full block
        self.free: OrderedDict[int, None] = OrderedDict()  # cached blocks no request uses, LRU first
        self.partials = 0  # blocks held by requests, not full yet
        self.events: list[CacheEvent] = []  # since the last ``take_events``

    def used(self) -> int:
        return len(self.blocks) - len(self.free) + self.partials

    def usage(self) -> float:
        return self.used() / self.num_blocks

    def hits(self, ids: list[int]) -> list[int]:
        """The hashes of the leading full blocks of ``ids`` that are cached."""
        out = []
        for h, _ in self._chain(ids, len(ids), 0, None):
            if h not in self.blocks:
                break
            out.append(h)
        return out

    def _chain(self, ids: list[int], upto: int, first: int, parent: int | None):
        """(hash, tokens) of each full block among ``ids[:upto]`` from block ``first`` on, chained
        from ``parent`` (the hash of block ``first - 1``)."""
        for start in range(first * self.block_size, upto - self.block_size + 1, self.block_size):
            tokens = ids[start:start + self.block_size]
            parent = chain_hash(parent, tokens)
            yield parent, tokens

    def can_take(self, hits: list[int], new_blocks: int) -> bool:
        """Whether ``hits`` can be referenced and ``new_blocks`` more taken."""
        return self._room(exclude=hits) >= new_blocks

    def reference(self, table: BlockTable, hits: list[int]) -> None:
        """The request's first blocks are these cached ones (a prefix cache hit)."""
        for h in hits:
            self._ref(h)
        table.hashes.extend(hits)

    def grow(self, table: BlockTable, ids: list[int], upto: int) -> bool:
        """The request has computed ``ids[:upto]``: the full blocks among them are cached (shared
        where the same block is cached already) and the rest is its partial block. False, with
        nothing changed, when the blocks are not there (the request waits or is preempted)."""
        previous = table.hashes[-1] if table.hashes else None
        new = list(self._chain(ids, upto, len(table.hashes), previous))
        fresh = [(h, tokens) for h, tokens in new if h not in self.blocks]
        partial = upto % self.block_size > 0
        if self._room(exclude=[h for h, _ in new]) + table.partial < len(fresh) + partial:
            return False
        for h, _ in new:
            if h in self.blocks:
                self._ref(h)
        self.partials -= table.partial
        self._evict_for(len(fresh) + partial)
        parents = [previous] + [h for h, _ in new]
        for i, (h, tokens) in enumerate(new):
            if h not in self.blocks:
                self.blocks[h] = Block(h, parents[i], tokens, refs=1)
        table.hashes.extend(h for h, _ in new)
        table.partial = partial
        self.partials += partial
        self._stored([h for h, _ in fresh])
        return True

    def release(self, table: BlockTable) -> None:
        """The request's blocks go back: its full blocks to the free queue, last block first."""
        for h in reversed(table.hashes):
            block = self.blocks[h]
            block.refs -= 1
            if block.refs == 0:
                self.free[h] = None
        if table.partial:
            self.partials -= 1
        table.hashes, table.partial = [], False

    def clear(self) -> bool:
        """Drops every cached block, when no request holds any (vLLM's reset_prefix_cache)."""
        if self.used():
            return False
        self.blocks.clear()
        self.free.clear()
        self.events.append(CacheEvent(EventKind.CLEARED))
        return True

    def take_events(self) -> list[CacheEvent]:
        events, self.events = self.events, []
        return events

    def _room(self, exclude: list[int]) -> int:
        """Blocks that can be taken: never used, or cached and free but for ``exclude``."""
        reclaimable = len(self.free) - sum(1 for h in set(exclude) if h in self.free)
        return self.num_blocks - len(self.blocks) - self.partials + reclaimable

    def _ref(self, h: int) -> None:
        self.blocks[h].refs += 1
        self.free.pop(h, None)

    def _evict_for(self, n: int) -> None:
        """Evicts free cached blocks, least recently freed first, until ``n`` were never used."""
        evicted = []
        while self.num_blocks - len(self.blocks) - self.partials < n:
            h, _ = self.free.popitem(last=False)
            del self.blocks[h]
            evicted.append(h)
        if evicted:
            self.events.append(CacheEvent(EventKind.REMOVED, evicted))

    def _stored(self, fresh: list[int]) -> None:
        """One BlockStored per run of blocks each the parent of the next (as vLLM's pool)."""
        run: list[int] = []
        for h in fresh:
            if run and self.blocks[h].parent != run[-1]:
                self._store_run(run)
                run = []
            run.append(h)
        if run:
            self._store_run(run)

    def _store_run(self, run: list[int]) -> None:
        self.events.append(CacheEvent(EventKind.STORED, run, self.blocks[run[0]].parent,
                                      [t for h in run for t in self.blocks[h].tokens]))
