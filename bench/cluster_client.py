"""The client-side fork/join orchestrator of bench.cluster: bench.peers' ThreadWeaver-style client
(decode to ``</Outlines>``, one request per outline to ``</Thread>``, all at once, join as the
authors' controller joins, go on), sending each engine request to the engine its router chooses,
over the workers' own request streams (the transport Loom's driver uses: no HTTP hop, which
favours the client).

Each engine request also notes how many leading prompt tokens some engine held when it was sent
(the engines' own KV events, in an index of this process): what it recomputed of a prefix the
cluster held is that less what its engine found cached.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.plan.formats import ThreadResult
from orchestrator.plan.published import get_format
from orchestrator.protocol.generation import GenRequest
from orchestrator.protocol.segment import Finish
from orchestrator.routing.stream_client import StreamClient

TW = get_format("threadweaver")


@dataclass(frozen=True)
class EngineCall:
    """One engine request: where it ran, its prompt, what its engine had cached, what the cluster held."""

    worker: str
    prompt_tokens: int
    cached_tokens: int
    held_tokens: int  # leading prompt tokens the engine holding most of them held when it was placed
    decided_ms: float  # the router's (or placer's) time to choose
    decided_cpu_ms: float  # the CPU it spent choosing
    itl_s: float  # seconds per token after its first (0: fewer than two tokens)
    reruns: int = 0  # earlier attempts lost with their worker


@dataclass
class JobRun:
    latency_s: float
    calls: list[EngineCall] = field(default_factory=list)
    text: str = ""


@dataclass(frozen=True)
class Completion:
    ids: list[int]
    stop: str | None


class ClientOrchestrator:
    def __init__(self, streams: dict[str, StreamClient], router, tok, held: Callable[[list[int]], int], room: int):
        self.streams, self.router, self.tok, self.held, self.room = streams, router, tok, held, room

    async def run(self, job_id: str, ids: list[int]) -> JobRun:
        t0, run, prompt_len, n = time.perf_counter(), JobRun(0.0), len(ids), 0
        while len(ids) < self.room:
            out = await self._complete(run, f"{job_id}-{n}", ids, [TW.fork_stop])
            n += 1
            ids = ids + out.ids
            plan = TW.find_plan(self._text(ids[prompt_len:]))
            if out.stop != TW.fork_stop or plan is None or not plan.outlines:
                break
            context = ids
            headers = [self.tok.encode(TW.thread_header(o), add_special_tokens=False) for o in plan.outlines]
            threads = await asyncio.gather(*(self._complete(run, f"{job_id}-{n}-t{i}", context + h, [TW.thread_close])
                                             for i, h in enumerate(headers)))
            n += 1
            results = [ThreadResult(o, self._text(t.ids), Finish.STOP if t.stop == TW.thread_close else Finish.EOS)
                       for o, t in zip(plan.outlines, threads)]
            ids = context + self.tok.encode(TW.render_join("", plan, results), add_special_tokens=False)
            if TW.ends_generation(results):
                break
        run.latency_s, run.text = time.perf_counter() - t0, self._text(ids[prompt_len:])
        return run

    def _text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    async def _complete(self, run: JobRun, rid: str, ids: list[int], stop: list[str]) -> Completion:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        worker = self.router.choose(ids)
        decided_ms, cpu_ms = (time.perf_counter() - t0) * 1000, (time.thread_time() - cpu0) * 1000
        held = self.held(ids)
        self.router.started(worker)
        out, last, first = [], None, 0.0
        try:
            async for chunk in self.streams[worker].generate(GenRequest(rid, ids, self.room - len(ids), stop)):
                first = first or (time.perf_counter() if chunk.token_ids else 0.0)
                out += chunk.token_ids
                last = chunk
        finally:
            self.router.finished(worker)
        itl = (time.perf_counter() - first) / (len(out) - 1) if len(out) > 1 else 0.0
        run.calls.append(EngineCall(worker, len(ids), last.cached_tokens if last else 0, held, round(decided_ms, 3), round(cpu_ms, 3), itl))
        return Completion(out, last.stop_reason if last else None)
