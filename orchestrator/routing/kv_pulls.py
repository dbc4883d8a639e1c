"""A request placed away from its prefix, with KV transfer on: the worker holding the prefix pins
its blocks (a hold), the chosen worker's engine pulls them before it runs the request
(workers/kv), and the request's record says where its prompt's KV came from.

On any failure (the holder dead, slow, or no longer holding the prefix; the pull failing) the
target recomputes the blocks, and the reason is recorded.
"""
from __future__ import annotations

import asyncio
import time

from ray.exceptions import RayActorError

from orchestrator.protocol.kv import PULLED_KEY, KVHold, PullReport
from orchestrator.protocol.segment import Placement, PrefixOrigin, PrefixSource, Progress
from orchestrator.routing.placement import Placer
from orchestrator.routing.pool import WorkerPool

HOLD_TIMEOUT_S = 10.0  # the holder's answer to a hold (it runs the prefix for one token)


class KVPulls:
    def __init__(self, pool: WorkerPool, placer: Placer):
        self.pool = pool
        self.placer = placer

    async def hold(self, rid: str, ids: list[int], placement: Placement,
                   progress: Progress) -> tuple[KVHold | None, str]:
        """The source worker pins the prompt's leading blocks for the target to pull: the hold, or
        None and why not (the target then recomputes them)."""
        src, t0 = placement.source, time.monotonic()
        try:
            hold = await asyncio.wait_for(self.pool.handle(src).hold.remote(f"{rid}-hold", ids, placement.matched[src]),
                                          HOLD_TIMEOUT_S)
        except RayActorError:
            self.pool.lost(src)
            return None, f"holder {src} died before pinning the prefix"
        except TimeoutError:
            return None, f"holder {src} did not pin the prefix in {HOLD_TIMEOUT_S:.0f} s"
        progress.hold_s = time.monotonic() - t0
        return hold, "" if hold else f"holder {src} no longer held the prefix"

    def pulled(self, kv_params: dict | None, progress: Progress) -> PrefixOrigin | None:
        """The target's report of its pull, as the record keeps it (None: it pulled nothing); the
        link model learns from a good one."""
        report = (kv_params or {}).get(PULLED_KEY)
        if report is None:
            return None
        r = PullReport(**report)
        tokens = progress.placement.pull_tokens
        if not r.ok:
            return PrefixOrigin(PrefixSource.RECOMPUTED, tokens, r.holder, r.blocks, 0, r.ms,
                                f"pull from {r.holder} failed: {r.error}")
        self.placer.observe_transfer(r.bytes, progress.hold_s + r.ms / 1000)
        return PrefixOrigin(PrefixSource.PULLED, tokens, r.holder, r.blocks, r.bytes, r.ms)


def local_origin(placement: Placement, progress: Progress, prompt: int, why: str) -> PrefixOrigin:
    """Where the prompt's KV came from, for a request that pulled nothing."""
    reason = why or placement.reason
    if progress.cached_tokens:
        return PrefixOrigin(PrefixSource.LOCAL, progress.cached_tokens, placement.worker, reason=reason)
    return PrefixOrigin(PrefixSource.RECOMPUTED, prompt, placement.worker, reason=reason)
