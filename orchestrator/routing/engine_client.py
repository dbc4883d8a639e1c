"""The job driver's engines and budget, behind two small protocols; Ray lives only here.

``EngineClient.decode`` places one segment on a worker, streams it, spends every token from the
thread's lease (lease.py) and aborts the engine request if it is cancelled; ``BudgetClient`` is the
coordinator as the driver sees it (open/close a job, admit a fork, count threads, lease tokens). The job
driver (job.py) takes both as constructor arguments, so its fork/join control flow is
tested with scripted fakes and run in production with the Ray implementations below.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ray.exceptions import RayActorError

from orchestrator.budget.lease import BudgetExhausted, ThreadLease
from orchestrator.budget.replica import RayBudgetClient
from orchestrator.protocol.engine import WorkerInfo
from orchestrator.protocol.generation import GenRequest, request_id
from orchestrator.protocol.kv import PULLED_KEY, KVHold, PullReport
from orchestrator.protocol.segment import Decode, Decoded, Placement, PrefixOrigin, Progress
from orchestrator.routing.kv_events import KVEventSubscriber, SharedIndex
from orchestrator.routing.placement import Placer
from orchestrator.routing.stream_client import StreamClient, WorkerLost
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import LoomMetrics

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a request whose worker dies is placed and run again, at most this often


REVIVE_TIMEOUT_S = 600.0  # how long a dead worker is waited for


LOAD_REFRESH_S = 0.05  # a placement uses engine loads at most this old (one refresh in flight at a time)


LOAD_TIMEOUT_S = 2.0


HOLD_TIMEOUT_S = 10.0  # the holder's answer to a hold (it runs the prefix for one token)


class RayEngineClient:
    """Worker actors (workers/worker.py) behind ``EngineClient``: place, stream, charge, abort.

    A request streams over the worker's own socket (stream_client.py), not as a Ray call with a
    Ray object per chunk; holds, aborts, loads and restarts are Ray calls.
    A worker that dies mid-request (its process, or its engine) is taken out of placement and
    the request is placed again and re-run from its prompt on a live worker (greedy decoding
    gives the same tokens; those already streamed to the caller are not sent twice). The tokens
    of the lost attempt stay charged; the node's record lists the attempts. Ray restarts the
    worker; once it answers ``ready`` again, its new engine's events are followed afresh and it
    is placed on again."""

    def __init__(self, workers: dict, budget: RayBudgetClient, placer: Placer, shared: SharedIndex,
                 model_name: str = "loom", metrics: LoomMetrics | None = None):
        self.workers = workers
        self.budget = budget
        self.placer = placer
        self.shared = shared
        self.model_name = model_name
        self.metrics = metrics or LoomMetrics()
        self.subscribers: dict[str, KVEventSubscriber] = {}
        self.streams: dict[str, StreamClient] = {}
        self.reviving: dict[str, asyncio.Task] = {}
        self._loads_at = 0.0
        self._refresh: asyncio.Task | None = None

    def watch(self, info: WorkerInfo) -> None:
        """Follow a worker's engine: its KV events (from scratch) and its measured speed."""
        old = self.subscribers.pop(info.name, None)
        if old is not None:
            old.stop()
        with self.shared.lock:
            self.shared.index.forget(info.name)
        self.placer.profiles[info.name] = info.profile
        if self.placer.link is not None:
            self.placer.link.bytes_per_token[info.name] = info.kv_bytes_per_token
        self.subscribers[info.name] = sub = KVEventSubscriber(info.name, info.kv, self.shared)
        sub.start()
        if info.name in self.streams:
            self.streams[info.name].close()
        self.streams[info.name] = StreamClient(info.stream)

    async def decode(self, call: Decode, progress: Progress) -> Decoded:
        relay = _Relay(call.on_tokens)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            placement = await self._place(call.prompt_ids)
            try:
                return await self._attempt(call, progress, placement, relay)
            except (RayActorError, WorkerLost) as e:  # the worker died under the request
                progress.attempts.append({"worker": placement.worker, "tokens": progress.tokens,
                                          "error": f"{type(e).__name__}"})
                self._lost(placement.worker)
                if attempt == MAX_ATTEMPTS:
                    raise
                progress.tokens, progress.first_token, relay.seen = 0, 0.0, 0
        raise AssertionError("unreachable")

    async def _place(self, ids: list[int]) -> Placement:
        if len(self.placer.live()) != 1:  # with one live worker there is no choice to make
            await self.refresh_loads()
        while not self.placer.live():  # every worker down: wait for the first one back
            pending = [t for t in self.reviving.values() if _running_here(t)]
            if not pending:
                raise NoLiveWorker("no worker is alive and none is restarting")
            await asyncio.wait(pending, timeout=REVIVE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        return self.placer.place(ids)

    async def _attempt(self, call: Decode, progress: Progress, placement: Placement, relay: _Relay) -> Decoded:
        ids = call.prompt_ids
        progress.placement, progress.started, progress.prefix = placement, time.time(), None
        rid = request_id(call.job_id, call.node_id, len(ids), len(progress.attempts))
        hold, why = await self._hold(rid, ids, placement, progress) if placement.source else (None, "")
        req = GenRequest(rid, ids, call.max_tokens, call.stops, call.sampling.temperature, call.sampling.seed,
                         call.sampling.top_p, trace=tracing.inject(),
                         kv_params=hold.to_params() if hold else None)
        with tracing.span(f"chat {self.model_name}", gen_ai__operation__name="chat",
                          gen_ai__request__model=self.model_name, gen_ai__request__max_tokens=call.max_tokens,
                          gen_ai__request__temperature=call.sampling.temperature,
                          gen_ai__usage__input_tokens=len(ids), loom__worker=placement.worker) as span:
            self.placer.started(placement.worker)
            out: list[int] = []
            try:
                return await self._stream(call, progress, req, out, relay)
            finally:
                self.placer.finished(placement.worker, len(out))
                progress.ended = time.time()
                progress.prefix = progress.prefix or _origin(placement, progress, len(ids), why)
                tracing.set_attrs(span, gen_ai__usage__output_tokens=len(out),
                                  loom__prefix__cached_tokens=progress.cached_tokens, loom__node=call.node_id,
                                  loom__prefix__source=progress.prefix.source,
                                  loom__kv__pulled_from=progress.prefix.worker if progress.prefix.bytes else "",
                                  loom__kv__bytes=progress.prefix.bytes, loom__kv__ms=progress.prefix.ms)
                ttft = progress.first_token - progress.started if progress.first_token else None
                self.metrics.request_done(len(ids), len(out), progress.cached_tokens, ttft)

    async def _hold(self, rid: str, ids: list[int], placement: Placement,
                    progress: Progress) -> tuple[KVHold | None, str]:
        """The source worker pins the prompt's leading blocks for the target to pull; on any
        failure the target recomputes them (the reason is returned for the record)."""
        src, t0 = placement.source, time.monotonic()
        try:
            hold = await asyncio.wait_for(self.workers[src].hold.remote(f"{rid}-hold", ids, placement.held[src]),
                                          HOLD_TIMEOUT_S)
        except RayActorError:
            self._lost(src)
            return None, f"holder {src} died before pinning the prefix"
        except TimeoutError:
            return None, f"holder {src} did not pin the prefix in {HOLD_TIMEOUT_S:.0f} s"
        progress.hold_s = time.monotonic() - t0
        return hold, "" if hold else f"holder {src} no longer held the prefix"

    def _pulled(self, kv_params: dict | None, progress: Progress) -> PrefixOrigin | None:
        """The target's report of its pull, as the node's record keeps it; the link model learns."""
        report = (kv_params or {}).get(PULLED_KEY)
        if report is None:
            return None
        r = PullReport(**report)
        tokens = progress.placement.pull_tokens
        if not r.ok:
            return PrefixOrigin("recomputed", tokens, r.holder, r.blocks, 0, r.ms, f"pull from {r.holder} failed: {r.error}")
        if self.placer.link is not None:
            self.placer.link.observe(r.bytes, progress.hold_s + r.ms / 1000)
        return PrefixOrigin("pulled", tokens, r.holder, r.blocks, r.bytes, r.ms)

    def _lost(self, worker: str) -> None:
        self.placer.down.add(worker)
        if not _running_here(self.reviving.get(worker)):
            self.reviving[worker] = asyncio.ensure_future(self._revive(worker))

    async def _revive(self, worker: str) -> None:
        """Waits for Ray to restart the worker (a new engine), then places on it again."""
        deadline = time.monotonic() + REVIVE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                info = await asyncio.wait_for(self.workers[worker].ready.remote(), REVIVE_TIMEOUT_S)
            except (RayActorError, TimeoutError):
                await asyncio.sleep(1.0)
                continue
            self.watch(info)
            self.placer.down.discard(worker)
            return
        log.error("worker %s did not come back in %.0f s", worker, REVIVE_TIMEOUT_S)

    async def refresh_loads(self) -> None:
        """Each engine's load, if the last reports are older than LOAD_REFRESH_S; concurrent
        callers share one refresh."""
        if time.monotonic() - self._loads_at < LOAD_REFRESH_S:
            return
        if not _running_here(self._refresh):
            self._refresh = asyncio.ensure_future(self._fetch_loads())
        await asyncio.shield(self._refresh)

    async def _fetch_loads(self) -> None:
        names = [n for n in self.workers if n not in self.placer.down]
        sent = {n: self.placer.sent.get(n, 0) for n in names}  # what each report counts
        loads = await asyncio.gather(*(asyncio.wait_for(self.workers[n].load.remote(), LOAD_TIMEOUT_S)
                                       for n in names), return_exceptions=True)
        for name, load in zip(names, loads):
            if isinstance(load, RayActorError):
                self._lost(name)
            elif not isinstance(load, BaseException):
                self.placer.report(name, load, sent[name])
        self._loads_at = time.monotonic()

    async def _stream(self, call: Decode, progress: Progress, req: GenRequest, out: list[int],
                      relay: _Relay) -> Decoded:
        """Streams the request on its lease. A request nobody streams to, whose first lease
        covers all its tokens, goes quiet (its first tokens and its end), stopped here at the job's
        deadline. Cancelled (by a sibling or the job, out of budget, or a failure), it is aborted
        on its worker, and what the engine made for it is charged."""
        worker = progress.placement.worker
        first = call.max_tokens if call.on_tokens is None else None
        async with ThreadLease(self.budget, call.job_id, f"n{call.node_id}", first=first) as lease:
            req.quiet = first is not None and lease.covers(call.max_tokens)
            limit = asyncio.timeout(lease.seconds_left() if req.quiet else None)
            try:
                async with limit:
                    return await self._consume(progress, self.streams[worker], req, out, relay, lease)
            except BaseException:
                await self._abort(self.workers[worker], req.request_id, progress, lease)
                if not limit.expired():
                    raise
            raise BudgetExhausted(await lease.settle())

    async def _abort(self, handle, request_id: str, progress: Progress, lease: ThreadLease) -> None:
        with contextlib.suppress(RayActorError):  # a dead worker has nothing left to abort
            made = await asyncio.shield(handle.abort.remote(request_id))
            if made > progress.tokens:  # held back by a quiet stream
                lease.charge(made - progress.tokens)
                progress.tokens = made

    async def _consume(self, progress: Progress, stream: StreamClient, req: GenRequest, out: list[int],
                       relay: _Relay, lease: ThreadLease) -> Decoded:
        async for chunk in stream.generate(req):
            out += chunk.token_ids
            progress.tokens += len(chunk.token_ids)
            progress.first_token = progress.first_token or (time.time() if chunk.token_ids else 0.0)
            progress.cached_tokens = max(progress.cached_tokens, chunk.cached_tokens)
            relay.send(chunk.token_ids)
            await lease.spend(len(chunk.token_ids))
            if chunk.finished:  # not waiting for the stream's end to be signalled: a round trip
                progress.prefix = self._pulled(chunk.kv_params, progress)
                return Decoded(out, _finish(chunk.finish_reason, chunk.stop_reason), chunk.stop_reason)
        return Decoded(out, "length")


def _origin(placement: Placement, progress: Progress, prompt: int, why: str) -> PrefixOrigin:
    """Where the prompt's KV came from, for a request that pulled nothing."""
    cached = progress.cached_tokens
    reason = why or placement.reason
    if cached:
        return PrefixOrigin("local", cached, placement.worker, reason=reason)
    return PrefixOrigin("recomputed", prompt, placement.worker, reason=reason)


def _running_here(task: asyncio.Task | None) -> bool:
    """A task still running on this event loop (a driver may run its jobs in successive loops)."""
    return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()


class NoLiveWorker(RuntimeError):
    """Every worker is down and none came back in time."""


class _Relay:
    """Passes streamed ids on once: a re-run attempt's first tokens, already sent, are held back."""

    def __init__(self, on_tokens):
        self.on_tokens = on_tokens
        self.sent = 0  # ids passed on, over all attempts
        self.seen = 0  # ids of this attempt

    def send(self, ids: list[int]) -> None:
        start = self.sent - self.seen
        self.seen += len(ids)
        if self.on_tokens is not None and start < len(ids):
            fresh = ids[max(0, start):]
            self.sent += len(fresh)
            self.on_tokens(fresh)


def _finish(reason: str | None, stop_reason: str | None) -> str:
    """vLLM's finish reason as the driver's: ``stop`` on a stop string, ``eos``, or ``length``."""
    if reason == "stop":
        return "stop" if stop_reason else "eos"
    return reason or "stop"
