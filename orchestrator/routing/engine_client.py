"""The engine client: places a segment on a worker, streams it over the worker's socket, spends
its tokens from the lease the driver opened, and aborts it if it is cancelled. Ray lives only at
this edge (and in the pool): the job driver sees ``protocol.segment.EngineClient``.

A worker that dies under a request (its stream breaks: ``WorkerLost``; a Ray call fails) is
taken out of placement and the request is placed again and re-run from its prompt on a live
worker (greedy decoding gives the same tokens; those already streamed to the caller are not sent
twice). The lost attempt's tokens stay charged; the node's record lists the attempts.
"""
from __future__ import annotations

import asyncio
import time

from ray.exceptions import RayActorError

from orchestrator.protocol.fork import ForkAdvice, ForkPolicy, ForkQuery
from orchestrator.protocol.generation import GenChunk, GenRequest, request_id
from orchestrator.protocol.segment import (
    Attempt,
    DeadlineReached,
    Finish,
    Placement,
    PrefixSource,
    Progress,
    SegmentRequest,
    SegmentResult,
    TokenSpender,
)
from orchestrator.routing.fork_width import advise
from orchestrator.routing.kv_pulls import KVPulls, local_origin
from orchestrator.routing.placement import Placer
from orchestrator.routing.pool import WorkerPool
from orchestrator.routing.stream_client import WorkerLost
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import KVPullOutcome, LoomMetrics

MAX_ATTEMPTS = 3  # a request whose worker dies is placed and run again, at most this often
ABORT_TIMEOUT_S = 5.0  # a worker's answer to an abort


class WorkerEngineClient:
    def __init__(self, pool: WorkerPool, placer: Placer, pulls: KVPulls, model_name: str = "loom",
                 metrics: LoomMetrics | None = None):
        self.pool = pool
        self.placer = placer
        self.pulls = pulls
        self.model_name = model_name
        self.metrics = metrics or LoomMetrics()

    async def generate(self, call: SegmentRequest, lease: TokenSpender, progress: Progress) -> SegmentResult:
        relay = _Relay(call.on_tokens)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            placement = await self._place(call.prompt_ids)
            try:
                return await self._attempt(call, lease, progress, placement, relay)
            except (RayActorError, WorkerLost) as e:  # the worker died under the request
                progress.attempts.append(Attempt(placement.worker, progress.tokens, type(e).__name__))
                self.pool.lost(placement.worker)
                if attempt == MAX_ATTEMPTS:
                    raise
                progress.tokens, progress.first_token = 0, 0.0
                relay.restart()
        raise AssertionError("unreachable")

    async def fork_width(self, query: ForkQuery) -> ForkAdvice:
        """How many of a fork's threads to run at once (``routing.fork_width``), on fresh loads."""
        if query.policy is ForkPolicy.ADAPTIVE:
            if len(self.placer.live()) != 1:
                await self.pool.refresh_loads()
            await self.pool.wait_for_live()
        return advise(self.placer, query)

    async def _place(self, ids: list[int]) -> Placement:
        if len(self.placer.live()) != 1:  # with one live worker there is no choice to make
            await self.pool.refresh_loads()
        await self.pool.wait_for_live()
        return self.placer.place(ids)

    async def _attempt(self, call: SegmentRequest, lease: TokenSpender, progress: Progress, placement: Placement,
                       relay: _Relay) -> SegmentResult:
        ids = call.prompt_ids
        progress.placement, progress.started, progress.prefix = placement, time.time(), None
        rid = request_id(call.job_id, call.node_id, len(ids), len(progress.attempts))
        hold, why = await self.pulls.hold(rid, ids, placement, progress) if placement.source else (None, "")
        s = call.sampling
        with tracing.span(f"chat {self.model_name}", tracing.Kind.LLM, gen_ai__operation__name="chat",
                          gen_ai__provider__name="loom", gen_ai__request__model=self.model_name,
                          gen_ai__request__max_tokens=call.max_tokens, gen_ai__request__temperature=s.temperature,
                          gen_ai__request__top_p=s.top_p, gen_ai__request__seed=s.seed, gen_ai__response__id=rid,
                          gen_ai__usage__input_tokens=len(ids), loom__worker=placement.worker,
                          loom__placement__reason=placement.reason, loom__placement__by=placement.by) as span:
            # the worker's span is this span's child: the context is injected inside it
            req = GenRequest(rid, ids, call.max_tokens, call.stops, s.temperature, s.seed, s.top_p,
                             trace=tracing.inject(), kv_params=hold.to_params() if hold else None,
                             quiet=not call.streamed and lease.covers(call.max_tokens))
            self.placer.started(placement.worker)
            out: list[int] = []
            try:
                return await self._stream(lease, progress, req, out, relay)
            finally:
                self.placer.finished(placement.worker, len(out))
                progress.ended = time.time()
                progress.prefix = progress.prefix or local_origin(placement, progress, len(ids), why)
                self._observe(span, call, progress, len(out))

    def _observe(self, span, call: SegmentRequest, progress: Progress, generated: int) -> None:
        prefix = progress.prefix
        tracing.set_attrs(span, gen_ai__usage__output_tokens=generated, gen_ai__response__model=self.model_name,
                          llm__token_count__prompt=len(call.prompt_ids), llm__token_count__completion=generated,
                          loom__node=call.node_id,
                          gen_ai__usage__cache_read__input_tokens=progress.cached_tokens,
                          loom__prefix__cached_tokens=progress.cached_tokens, loom__prefix__source=prefix.source,
                          loom__kv__pulled_from=prefix.worker if prefix.bytes else "",
                          loom__kv__bytes=prefix.bytes, loom__kv__ms=prefix.ms)
        ttft = progress.first_token - progress.started if progress.first_token else None
        pull = None
        if progress.placement.source:  # a pull was to be made: did it come?
            pull = KVPullOutcome(prefix.source == PrefixSource.PULLED, prefix.tokens, prefix.bytes)
        self.metrics.request_done(len(call.prompt_ids), generated, progress.cached_tokens, ttft, pull)

    async def _stream(self, lease: TokenSpender, progress: Progress, req: GenRequest, out: list[int],
                      relay: _Relay) -> SegmentResult:
        """Streams the request. A quiet one (its first grant covers all its tokens) is stopped here
        at the job's deadline. Cancelled (by a sibling or the job, out of budget, or a failure),
        it is aborted on its worker, and what the engine made for it is charged."""
        worker = progress.placement.worker
        limit = asyncio.timeout(lease.seconds_left() if req.quiet else None)
        try:
            async with limit:
                return await self._consume(progress, req, out, relay, lease)
        except BaseException:
            await self._abort(worker, req.request_id, progress, lease)
            if not limit.expired():
                raise
        raise DeadlineReached(f"{req.request_id} stopped at the job's deadline")

    async def _abort(self, worker: str, rid: str, progress: Progress, lease: TokenSpender) -> None:
        """Stops the request on its worker, within ABORT_TIMEOUT_S: a worker whose node was lost is
        one Ray waits to restart, and a call to it would wait as long (its stream's loss already
        ended the request there, if anything is left of it)."""
        try:
            made = await asyncio.wait_for(asyncio.shield(self.pool.handle(worker).abort.remote(rid)), ABORT_TIMEOUT_S)
        except (RayActorError, TimeoutError):  # a dead or unreachable worker has nothing left to abort
            return
        if made > progress.tokens:  # held back by a quiet stream
            lease.charge(made - progress.tokens)
            progress.tokens = made

    async def _consume(self, progress: Progress, req: GenRequest, out: list[int], relay: _Relay,
                       lease: TokenSpender) -> SegmentResult:
        async for chunk in self.pool.stream(progress.placement.worker).generate(req):
            self._take(progress, chunk, out, relay)
            await lease.spend(len(chunk.token_ids))
            if chunk.finished:  # not waiting for the stream's end to be signalled: a round trip
                progress.prefix = self.pulls.pulled(chunk.kv_params, progress)
                return SegmentResult(out, Finish.of_engine(chunk.finish_reason, chunk.stop_reason), chunk.stop_reason)
        return SegmentResult(out, Finish.LENGTH)

    @staticmethod
    def _take(progress: Progress, chunk: GenChunk, out: list[int], relay: _Relay) -> None:
        out += chunk.token_ids
        progress.tokens += len(chunk.token_ids)
        progress.first_token = progress.first_token or (time.time() if chunk.token_ids else 0.0)
        progress.cached_tokens = max(progress.cached_tokens, chunk.cached_tokens)
        relay.send(chunk.token_ids)


class _Relay:
    """Passes streamed ids on once: a re-run attempt's first tokens, already sent, are held back."""

    def __init__(self, on_tokens):
        self.on_tokens = on_tokens
        self.sent = 0  # ids passed on, over all attempts
        self.seen = 0  # ids of this attempt

    def restart(self) -> None:
        """A new attempt streams from its first token."""
        self.seen = 0

    def send(self, ids: list[int]) -> None:
        start = self.sent - self.seen
        self.seen += len(ids)
        if self.on_tokens is not None and start < len(ids):
            fresh = ids[max(0, start):]
            self.sent += len(fresh)
            self.on_tokens(fresh)
