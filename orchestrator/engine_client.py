"""The job driver's engines and budget, behind two small protocols; Ray lives only here.

``EngineClient.decode`` places one segment on a worker, streams it, charges every token to
the coordinator and aborts the engine request if it is cancelled; ``BudgetClient`` is the
coordinator as the driver sees it (open/close a job, admit a fork, count threads). The job
driver (job.py) takes both as constructor arguments, so its fork/join control flow is
tested with scripted fakes and run in production with the Ray implementations below.
"""
from __future__ import annotations

import asyncio
import time
from typing import Protocol

from orchestrator import tracing
from orchestrator.budget import Admission, JobBudget, Ledger
from orchestrator.generation import Decode, Decoded, GenRequest, Progress
from orchestrator.metrics import LoomMetrics
from orchestrator.placement import Placer

CHARGE_EVERY = 8  # tokens between charges to the coordinator
LOAD_REFRESH_S = 0.05  # a placement uses engine loads at most this old (one refresh in flight at a time)
LOAD_TIMEOUT_S = 2.0


class BudgetExhausted(Exception):
    """The job's token budget or deadline ran out while a request streamed."""


class EngineClient(Protocol):
    async def decode(self, call: Decode, progress: Progress) -> Decoded: ...


class BudgetClient(Protocol):
    async def open_job(self, job_id: str, budget: JobBudget) -> None: ...
    async def close_job(self, job_id: str) -> dict: ...
    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission: ...
    async def start_threads(self, job_id: str, k: int) -> None: ...
    async def end_thread(self, job_id: str) -> None: ...


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

    async def charge(self, job_id: str, node: str, tokens: int) -> str:
        return self.ledger.charge(job_id, node, tokens, self.clock())


class RayBudgetClient:
    """The coordinator actor (orchestrator/coordinator.py) behind ``BudgetClient``."""

    def __init__(self, handle):
        self.handle = handle

    async def open_job(self, job_id: str, budget: JobBudget) -> None:
        await self.handle.open_job.remote(job_id, budget, time.time())

    async def close_job(self, job_id: str) -> dict:
        return await self.handle.close_job.remote(job_id)

    async def admit_fork(self, job_id: str, n: int, depth: int) -> Admission:
        return await self.handle.admit_fork.remote(job_id, n, depth, time.time())

    async def start_threads(self, job_id: str, k: int) -> None:
        await self.handle.start_threads.remote(job_id, k)

    async def end_thread(self, job_id: str) -> None:
        await self.handle.end_thread.remote(job_id)

    async def charge(self, job_id: str, node: str, tokens: int) -> str:
        return await self.handle.charge.remote(job_id, node, tokens, time.time())


class RayEngineClient:
    """Worker actors (workers/worker.py) behind ``EngineClient``: place, stream, charge, abort."""

    def __init__(self, workers: dict, budget: RayBudgetClient, placer: Placer, model_name: str = "loom",
                 metrics: LoomMetrics | None = None):
        self.workers = workers
        self.budget = budget
        self.placer = placer
        self.model_name = model_name
        self.metrics = metrics or LoomMetrics()
        self._loads_at = 0.0
        self._refresh: asyncio.Task | None = None

    async def decode(self, call: Decode, progress: Progress) -> Decoded:
        ids = call.prompt_ids
        await self.refresh_loads()
        placement = self.placer.place(ids)
        progress.placement, progress.started = placement, time.time()
        req = GenRequest(f"{call.job_id}-n{call.node_id}-{len(ids)}", ids, call.max_tokens, call.stops,
                         call.sampling.temperature, call.sampling.seed, call.sampling.top_p, trace=tracing.inject())
        with tracing.span(f"chat {self.model_name}", gen_ai__operation__name="chat",
                          gen_ai__request__model=self.model_name, gen_ai__request__max_tokens=call.max_tokens,
                          gen_ai__request__temperature=call.sampling.temperature,
                          gen_ai__usage__input_tokens=len(ids), loom__worker=placement.worker) as span:
            self.placer.started(placement.worker)
            out: list[int] = []
            try:
                return await self._stream(call, progress, req, out)
            finally:
                self.placer.finished(len(out))
                progress.ended = time.time()
                tracing.set_attrs(span, gen_ai__usage__output_tokens=len(out),
                                  loom__prefix__cached_tokens=progress.cached_tokens, loom__node=call.node_id)
                ttft = progress.first_token - progress.started if progress.first_token else None
                self.metrics.request_done(len(ids), len(out), progress.cached_tokens, ttft)

    async def refresh_loads(self) -> None:
        """Each engine's load, if the last reports are older than LOAD_REFRESH_S; concurrent
        callers share one refresh."""
        if time.monotonic() - self._loads_at < LOAD_REFRESH_S:
            return
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._fetch_loads())
        await asyncio.shield(self._refresh)

    async def _fetch_loads(self) -> None:
        names = list(self.workers)
        loads = await asyncio.gather(*(asyncio.wait_for(self.workers[n].load.remote(), LOAD_TIMEOUT_S)
                                       for n in names), return_exceptions=True)
        for name, load in zip(names, loads):
            if not isinstance(load, BaseException):
                self.placer.report(name, load)
        self._loads_at = time.monotonic()

    async def _stream(self, call: Decode, progress: Progress, req: GenRequest, out: list[int]) -> Decoded:
        handle = self.workers[progress.placement.worker]
        try:
            return await self._consume(call, progress, handle, req, out)
        except BaseException:  # cancelled by a sibling or the job, out of budget, or a failure
            await asyncio.shield(handle.abort.remote(req.request_id))
            raise

    async def _consume(self, call: Decode, progress: Progress, handle, req: GenRequest, out: list[int]) -> Decoded:
        pending, result = 0, Decoded([], "length")
        async for ref in handle.generate.options(num_returns="streaming").remote(req):
            chunk = await ref
            out += chunk.token_ids
            progress.tokens += len(chunk.token_ids)
            progress.first_token = progress.first_token or (time.time() if chunk.token_ids else 0.0)
            progress.cached_tokens = max(progress.cached_tokens, chunk.cached_tokens)
            if call.on_tokens is not None and chunk.token_ids:
                call.on_tokens(chunk.token_ids)
            pending += len(chunk.token_ids)
            if pending >= CHARGE_EVERY or chunk.finished:
                await self._charge(call, pending)
                pending = 0
            if chunk.finished:
                result = Decoded(out, _finish(chunk.finish_reason, chunk.stop_reason), chunk.stop_reason)
        result.token_ids = out
        return result

    async def _charge(self, call: Decode, n: int) -> None:
        stop = await self.budget.charge(call.job_id, f"n{call.node_id}", n)
        if stop:
            raise BudgetExhausted(stop)


def _finish(reason: str | None, stop_reason: str | None) -> str:
    """vLLM's finish reason as the driver's: ``stop`` on a stop string, ``eos``, or ``length``."""
    if reason == "stop":
        return "stop" if stop_reason else "eos"
    return reason or "stop"

