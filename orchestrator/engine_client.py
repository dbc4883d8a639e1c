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
from dataclasses import dataclass
from typing import Protocol

from ray.exceptions import RayActorError

from orchestrator import tracing
from orchestrator.budget import Admission, Applied, BudgetCall, BudgetError, JobBudget, JobUsage, Lease, Ledger
from orchestrator.generation import (
    PULLED_KEY,
    Decode,
    Decoded,
    GenRequest,
    KVHold,
    Placement,
    PrefixOrigin,
    Progress,
    PullReport,
    WorkerInfo,
    request_id,
)
from orchestrator.kv_events import KVEventSubscriber, SharedIndex
from orchestrator.lease import BudgetExhausted, ThreadLease
from orchestrator.metrics import LoomMetrics
from orchestrator.placement import Placer
from orchestrator.stream_client import StreamClient, WorkerLost

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a request whose worker dies is placed and run again, at most this often
REVIVE_TIMEOUT_S = 600.0  # how long a dead worker is waited for
LOAD_REFRESH_S = 0.05  # a placement uses engine loads at most this old (one refresh in flight at a time)
LOAD_TIMEOUT_S = 2.0
HOLD_TIMEOUT_S = 10.0  # the holder's answer to a hold (it runs the prefix for one token)
VIEW_MAX_AGE_S = 1.0  # a driver admits forks itself with a count of the cluster's threads at most this old


class EngineClient(Protocol):
    async def decode(self, call: Decode, progress: Progress) -> Decoded: ...


class BudgetClient(Protocol):
    async def open_job(self, job_id: str, budget: JobBudget) -> None: ...
    async def close_job(self, job_id: str) -> dict: ...
    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission: ...
    async def start_threads(self, job_id: str, k: int) -> None: ...
    async def end_thread(self, job_id: str) -> None: ...
    async def lease(self, job_id: str, node: str, used: int, want: int) -> Lease: ...
    async def settle(self, job_id: str, node: str, used: int) -> str: ...
    async def drain(self) -> None: ...


class LocalBudgetClient:
    """A ``Ledger`` in this process behind ``BudgetClient`` (one driver, no coordinator actor)."""

    def __init__(self, ledger: Ledger, clock=time.time):
        self.ledger = ledger
        self.clock = clock

    async def open_job(self, job_id: str, budget: JobBudget) -> None:
        self.ledger.open_job(job_id, budget, self.clock())

    async def close_job(self, job_id: str) -> dict:
        return self.ledger.close_job(job_id)

    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission:
        return self.ledger.admit_fork(job_id, n, depth, self.clock())

    async def start_threads(self, job_id: str, k: int) -> None:
        self.ledger.start_threads(job_id, k)

    async def end_thread(self, job_id: str) -> None:
        self.ledger.end_thread(job_id)

    async def lease(self, job_id: str, node: str, used: int, want: int) -> Lease:
        return self.ledger.lease(job_id, node, used, want, self.clock())

    async def settle(self, job_id: str, node: str, used: int) -> str:
        return self.ledger.settle(job_id, node, used, self.clock())

    async def drain(self) -> None:
        """Nothing is ever in flight to an in-process ledger."""


@dataclass(frozen=True)
class ClusterView:
    """The cluster's threads as a driver last heard them from the coordinator."""

    others: int  # other drivers' threads in flight
    max_threads: int  # the cluster's cap (max_threads_in_flight)
    at: float  # when the batch whose answer said so was sent (time.monotonic)


class RayBudgetClient:
    """The coordinator actor (orchestrator/coordinator.py) behind ``BudgetClient``.

    Only one driver spends a job's tokens, so the driver keeps an exact copy of each open job's
    account and answers leases and settles itself, with the ledger's own policy
    (``JobUsage.apply``); those calls, like opening a job and counting its threads, are numbered
    and sent to the coordinator without waiting, the calls of one pass of the event loop as one
    batch. Ray runs one caller's calls to an actor in the order they were sent, so the
    coordinator's ledger applies the same calls in the same order and comes to the same answers.
    Closing a job is such a call too: the job's usage is our copy's, and the coordinator drops
    the account after the job's other calls.

    A fork's admission needs the cluster's threads in flight, other drivers' too. Each batch's
    answer carries the coordinator's count once it applied the batch (``Applied``); less our own
    threads as of that batch, it is the other drivers' (``ClusterView``). While that view is at
    most ``view_max_age_s`` old, a fork is admitted here, with the ledger's own policy
    (``JobUsage.admission``), and the admission sent as one more call; an older view, or none, and
    the coordinator is asked (after what was posted), as every admission once was: that round
    trip took 3.3 ms a fork (median of 17, concurrency 1, this project's 2-core VM). With one
    driver the view is exact; with several, a fork may miss another driver's threads started
    within the last round trip, and the cluster's cap on threads is a little soft by that (it
    already gives every admitted fork at least one thread).

    When the coordinator has restarted and no longer knows a job, the client gives all its open
    accounts back (``restore``): budgets and the cluster-wide thread count survive the restart,
    and a call Ray retries after the restore is skipped by its number."""

    def __init__(self, handle, view_max_age_s: float = VIEW_MAX_AGE_S):
        self.handle = handle
        self.view_max_age_s = view_max_age_s
        self.accounts: dict[str, JobUsage] = {}
        self.outbox: list[BudgetCall] = []  # posted, not yet sent
        self.sent: set[asyncio.Task] = set()  # batches sent, not yet applied
        self.view: ClusterView | None = None

    async def open_job(self, job_id: str, budget: JobBudget) -> None:
        now = time.time()
        self.accounts[job_id] = JobUsage(budget, now)
        self._post(BudgetCall(job_id, 0, "open_job", now, budget=budget))

    async def close_job(self, job_id: str) -> dict:
        """The job's usage, from our exact copy of its account; the close is sent at once (it
        would not wait for the next pass of the event loop), not waited for."""
        account = self.accounts.pop(job_id)
        self._post(BudgetCall(job_id, account.calls + 1, "close_job", time.time()))
        self._flush()
        return Ledger.usage_dict(account)

    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission:
        view = self.view
        if view is not None and time.monotonic() - view.at <= self.view_max_age_s:
            free = view.max_threads - view.others - self._threads()
            adm = self.accounts[job_id].admission(n, depth, time.time(), free)
            if adm.admitted:
                self._mirror(job_id, "fork")
            return adm
        self._flush()  # the coordinator applies what was posted first
        now = time.time()
        try:
            adm = await self.handle.admit_fork.remote(job_id, n, depth, now)
        except BudgetError as e:  # raised in the coordinator: it does not know the job
            if job_id not in self.accounts or "is not open" not in str(e):
                raise
            await self._restore()
            adm = await self.handle.admit_fork.remote(job_id, n, depth, now)
        self.accounts[job_id].forks += adm.admitted
        return adm

    async def start_threads(self, job_id: str, k: int) -> None:
        self._mirror(job_id, "threads", threads=k)

    async def end_thread(self, job_id: str) -> None:
        self._mirror(job_id, "threads", threads=-1)

    async def lease(self, job_id: str, node: str, used: int, want: int) -> Lease:
        return self._mirror(job_id, "lease", node=node, used=used, want=want)

    async def settle(self, job_id: str, node: str, used: int) -> str:
        return self._mirror(job_id, "settle", node=node, used=used)

    def _mirror(self, job_id: str, kind: str, **fields):
        """The call applied to our copy of the account (its answer returned), then posted."""
        account = self.accounts[job_id]
        call = BudgetCall(job_id, account.calls + 1, kind, time.time(), **fields)
        answer = account.apply(call)
        self._post(call)
        return answer

    def _post(self, call: BudgetCall) -> None:
        self.outbox.append(call)
        if len(self.outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self) -> None:
        """Returns once every call posted so far has been applied by the coordinator (or failed)."""
        self._flush()
        await asyncio.gather(*self.sent, return_exceptions=True)

    def _threads(self) -> int:
        """Our jobs' threads in flight."""
        return sum(a.in_flight for a in self.accounts.values())

    def _flush(self) -> None:
        """Sends what was posted, as one call."""
        calls, self.outbox = self.outbox, []
        if not calls:
            return
        ref = self.handle.apply.remote(calls)
        task = asyncio.ensure_future(self._applied(ref, calls, self._threads(), time.monotonic()))
        self.sent.add(task)
        task.add_done_callback(self.sent.discard)

    async def _applied(self, ref, calls: list[BudgetCall], mine: int, at: float) -> None:
        """``mine``: our threads in flight once the coordinator has applied these calls."""
        try:
            applied: Applied = await ref
        except Exception:  # nobody waits on a batch: logged (jobs' usage comes from our copies)
            log.exception("the coordinator did not apply %d budget calls", len(calls))
            return
        if any(applied.errors):  # a restarted coordinator: our accounts already hold these calls
            await self._restore()
        elif self.view is None or self.view.at < at:
            self.view = ClusterView(applied.threads_in_flight - mine, applied.max_threads_in_flight, at)

    async def _restore(self) -> None:
        await self.handle.restore.remote(dict(self.accounts))


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

