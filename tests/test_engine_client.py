"""The engine client's control flow (orchestrator/routing/engine_client.py) without Ray or vLLM:
two scripted workers serve real request streams (workers/stream_server.py over loopback) and
answer aborts as a worker does; placement, the pool, the token lease and the ledger are Loom's
own. What is checked is what the job's account and its caller see, never how the fakes were
called."""
from __future__ import annotations

import asyncio
import time

import pytest
from polling import until

from orchestrator.budget.lease import BudgetExhausted, TokenLease
from orchestrator.budget.ledger import Ledger
from orchestrator.budget.local import LocalBudget
from orchestrator.budget.policy import JobBudget
from orchestrator.protocol.engine import EngineLoad, EngineProfile, KVEndpoints, WorkerInfo
from orchestrator.protocol.generation import GenChunk, GenRequest
from orchestrator.protocol.segment import Finish, Progress, Sampling, SegmentRequest
from orchestrator.routing.engine_client import WorkerEngineClient
from orchestrator.routing.kv_events import SharedIndex
from orchestrator.routing.kv_index import KVIndex
from orchestrator.routing.kv_pulls import KVPulls
from orchestrator.routing.placement import Placer
from orchestrator.routing.pool import WorkerPool
from orchestrator.telemetry.metrics import NullMetrics
from workers.stream_server import StreamServer

PROFILE = EngineProfile(1e-4, {1: 0.01})
NOWHERE = KVEndpoints("tcp://127.0.0.1:9", "tcp://127.0.0.1:9")  # no KV events: nothing is cached


class ScriptedWorker:
    """Streams token i as id i: the first ``burst`` at once, then one per ``gap_s``. A quiet
    request sends its first token and holds the rest for its end, as a worker's quiet stream does;
    ``abort`` ends a request and answers how many tokens it made, as the worker actor's does."""

    def __init__(self, name: str, gap_s: float = 0.002, burst: int = 50):
        self.name, self.gap_s, self.burst = name, gap_s, burst
        self.stall_first_attempt_at: int | None = None  # a request's first attempt hangs at this token
        self.made: dict[str, int] = {}
        self.stops: dict[str, asyncio.Event] = {}
        self.server = StreamServer(self.generate, "127.0.0.1")
        self.abort, self.load, self.ready = _Remote(self._abort), _Remote(self._load), _Remote(self._never)

    async def generate(self, req: GenRequest):
        rid, held = req.request_id, []
        self.made[rid], stop = 0, self.stops.setdefault(rid, asyncio.Event())
        for i in range(req.max_tokens):
            if i >= self.burst:
                await asyncio.sleep(self.gap_s)
            if i == self.stall_first_attempt_at and "-r" not in rid:
                await asyncio.Event().wait()  # until its stream breaks
            if stop.is_set():
                return
            self.made[rid], last = i + 1, i == req.max_tokens - 1
            held.append(i)
            if last or not req.quiet or i == 0:
                yield GenChunk(rid, held, finished=last, finish_reason="length" if last else None)
                held = []

    async def _abort(self, rid: str) -> int:
        self.stops.setdefault(rid, asyncio.Event()).set()
        return self.made.get(rid, 0)

    async def _load(self) -> EngineLoad:
        return EngineLoad()

    async def _never(self):
        await asyncio.Event().wait()  # a dead worker that Ray never brings back

    async def info(self) -> WorkerInfo:
        return WorkerInfo(self.name, NOWHERE, await self.server.start(), PROFILE, 32)


class _Remote:
    """``handle.method.remote(...)`` as an awaitable, as on a Ray actor handle."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return asyncio.ensure_future(self.fn(*args))


@pytest.fixture
async def cluster():
    workers = {n: ScriptedWorker(n) for n in ("w0", "w1")}
    index = SharedIndex(KVIndex(32))
    placer = Placer(list(workers), index)
    pool = WorkerPool(workers, placer, index)
    for w in workers.values():
        pool.watch(await w.info())
    client = WorkerEngineClient(pool, placer, KVPulls(pool, placer), metrics=NullMetrics())
    yield client, workers, pool
    pool.close()
    for w in workers.values():
        w.server.close()


def account(**budget) -> tuple[LocalBudget, Ledger]:
    ledger = Ledger()
    ledger.open_job("j", JobBudget(**budget), time.time())
    return LocalBudget(ledger), ledger


def call(max_tokens: int, on_tokens=None) -> SegmentRequest:
    return SegmentRequest("j", 1, [1, 2, 3], max_tokens, [], Sampling(), on_tokens=on_tokens)


async def test_a_quiet_request_stopped_at_the_deadline_is_aborted_and_all_its_engine_made_is_charged(cluster):
    """Its worker holds back all but its first token, and never ends (10,000 tokens): the deadline
    always falls while it decodes, however fast this machine is."""
    client, workers, _ = cluster
    budget, ledger = account(deadline_s=0.3, max_total_tokens=20_000, max_thread_tokens=20_000)
    progress = Progress()
    with pytest.raises(BudgetExhausted, match="deadline of 0.3s passed"):
        async with TokenLease(budget, "j", "n1", first=10_000) as lease:
            await client.generate(call(10_000), lease, progress)
    made = workers[progress.placement.worker].made["j-n1-3"]
    assert made >= 50 and progress.tokens == made  # streamed 1; the rest came with the abort's answer
    assert ledger.usage("j").tokens == made and ledger.usage("j").per_thread == {"n1": made}


async def test_a_request_whose_worker_dies_is_placed_again_and_its_caller_sees_each_token_once(cluster):
    client, workers, pool = cluster
    budget, ledger = account(max_total_tokens=1000, max_thread_tokens=1000)
    seen: list[int] = []
    progress = Progress()

    for w in workers.values():
        w.stall_first_attempt_at = 5

    async def kill_first_worker():
        # its first five tokens streamed, it hangs: always the same point
        await until(lambda: progress.tokens >= 5, 30, "the first worker's five tokens", every=0.001)
        workers[progress.placement.worker].server.close()  # its process gone: every stream breaks

    killer = asyncio.ensure_future(kill_first_worker())
    async with TokenLease(budget, "j", "n1") as lease:
        out = await client.generate(call(40, on_tokens=seen.extend), lease, progress)
    await killer
    lost = progress.attempts[0].worker
    assert out.token_ids == list(range(40)) and out.finish == Finish.LENGTH
    assert seen == list(range(40))  # the re-run's first tokens were not sent twice
    assert progress.placement.worker != lost and lost not in pool.placer.live()
    assert progress.attempts[0].tokens == 5
    assert ledger.usage("j").tokens == 5 + 40  # the lost attempt's tokens stay charged
