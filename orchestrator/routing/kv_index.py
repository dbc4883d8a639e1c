"""Which prompt prefixes each engine holds, as the engines themselves report it. Plain Python.

Each vLLM engine publishes its block pool's own events (``kv_events_config``): ``BlockStored``
(the engine's block hashes, the parent's hash, the blocks' token ids), ``BlockRemoved``
(evicted), ``AllBlocksCleared``, in batches numbered 0, 1, 2, ... The index applies them per
worker and answers "how many leading tokens of this prompt does each worker hold".

Keys: the engines' own hashes are seeded per process (vLLM's ``NONE_HASH``), so Loom keys a
block by its token ids instead: a chained blake2b over (parent key, the block's token ids),
the same in every process. The index keeps, per worker, the engine hash -> key map that
``BlockRemoved`` needs. A stored block whose parent the index never saw (it was stored during
a gap) cannot be keyed and is left out: the index may under-count what a worker holds, never
over-count it.

Gaps: a batch whose number is not the next one means events were lost (a dropped message, a
late subscriber). ``apply`` says so; the subscriber asks the engine to replay from the first
missing batch, and where the engine no longer has it, ``resync`` drops the worker's whole view
and starts again from the batch in hand (a view that is too small, never a stale one).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

ROOT = b""  # the parent key of a prompt's first block


def block_keys(ids: list[int], block_size: int, parent: bytes = ROOT) -> list[bytes]:
    """The chained keys of the full blocks of ``ids``: key i covers tokens [0, (i+1)*block_size)."""
    keys = []
    for start in range(0, len(ids) - len(ids) % block_size, block_size):
        parent = _key(parent, ids[start:start + block_size])
        keys.append(parent)
    return keys


def _key(parent: bytes, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little", signed=True) for t in tokens))
    return h.digest()


@dataclass(frozen=True)
class BlockStored:
    block_hashes: list  # the engine's hashes (bytes or int), one per block
    parent_block_hash: object  # None: the first block of a prompt
    token_ids: list[int]
    block_size: int


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: list


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass
class WorkerView:
    keys: set[bytes] = field(default_factory=set)
    by_hash: dict = field(default_factory=dict)  # engine hash -> key
    seq: int = -1  # the last batch applied
    resyncs: int = 0
    unkeyed: int = 0  # stored blocks left out: their parent was never seen


class KVIndex:
    def __init__(self, block_size: int):
        self.block_size = block_size
        self.views: dict[str, WorkerView] = {}

    def apply(self, worker: str, seq: int, events: list[KVEvent]) -> bool:
        """Apply batch ``seq``; False (nothing applied) when batches before it are missing."""
        view = self.views.setdefault(worker, WorkerView())
        if seq <= view.seq:
            return True  # seen already (a replay overlapping the live stream)
        if seq != view.seq + 1:
            return False
        for event in events:
            self._apply(view, event)
        view.seq = seq
        return True

    def resync(self, worker: str, seq: int, events: list[KVEvent]) -> None:
        """Forget everything about ``worker`` and start again from batch ``seq``."""
        old = self.views.get(worker, WorkerView())
        self.views[worker] = WorkerView(seq=seq - 1, resyncs=old.resyncs + 1)
        self.apply(worker, seq, events)

    def forget(self, worker: str) -> None:
        """The worker's engine is gone (or replaced): it holds nothing we know of."""
        self.views.pop(worker, None)

    def next_seq(self, worker: str) -> int:
        return self.views.get(worker, WorkerView()).seq + 1

    def _apply(self, view: WorkerView, event: KVEvent) -> None:
        if isinstance(event, BlockStored):
            self._stored(view, event)
        elif isinstance(event, BlockRemoved):
            for h in event.block_hashes:
                key = view.by_hash.pop(h, None)
                if key is not None:
                    view.keys.discard(key)
        elif isinstance(event, AllBlocksCleared):
            view.keys.clear()
            view.by_hash.clear()

    def _stored(self, view: WorkerView, event: BlockStored) -> None:
        if event.block_size != self.block_size:
            raise ValueError(f"engine block size {event.block_size} is not the index's {self.block_size}")
        parent = ROOT if event.parent_block_hash is None else view.by_hash.get(event.parent_block_hash)
        if parent is None:
            view.unkeyed += len(event.block_hashes)
            return
        keys = block_keys(event.token_ids, self.block_size, parent)
        for h, key in zip(event.block_hashes, keys):
            view.by_hash[h] = key
            view.keys.add(key)

    def matched(self, ids: list[int], workers: list[str]) -> dict[str, int]:
        """Per worker, the leading tokens of ``ids`` its cache holds (whole blocks)."""
        keys = block_keys(ids, self.block_size)
        return {w: self._leading(self.views.get(w), keys) for w in workers}

    def _leading(self, view: WorkerView | None, keys: list[bytes]) -> int:
        n = 0
        for key in keys if view is not None else ():
            if key not in view.keys:
                break
            n += self.block_size
        return n
