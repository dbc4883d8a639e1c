"""A Ray actor that owns one engine (one GPU, or the CPU) and streams generations.

``generate`` is an async generator of ``GenChunk`` deltas as the engine produces them (batched
by ``stream_interval_s``: stream_batch.py), so the job can spend tokens and cancel mid-thread; a
quiet request sends only its first tokens and its end, and ``abort`` tells how many tokens the
engine made for it. Drivers reach it over the worker's own socket (stream_server.py, its
endpoint in ``WorkerInfo``), not as a Ray call; the other methods are Ray calls.
Requests run concurrently inside the engine's batch.
At start-up (``ready``) the worker measures its engine (prefill seconds per token, decode
step seconds at a few batch sizes) for the placement cost model, and tells where its
engine publishes its KV cache events.
"""
from __future__ import annotations

import asyncio
import os
import random
import statistics
import time

import ray

from orchestrator.protocol.engine import EngineLoad, EngineProfile, StepSample, WorkerInfo
from orchestrator.protocol.generation import GenChunk, GenRequest
from orchestrator.protocol.kv import HOLD_KEY, HoldRequest, KVHold
from orchestrator.telemetry import tracing
from workers.config import EngineConfig
from workers.stream_batch import batched, quiet
from workers.stream_server import StreamServer

PROFILE_BATCHES = (1, 4, 16)
PROFILE_DECODE_TOKENS = 32
PROFILE_RUNS = 3
PROFILE_SHORT_PROMPT = 8  # prefill is timed at this many tokens and at a long prompt: cost per token and per request


class EngineWorker:
    """The worker's logic, usable without Ray (the actor below wraps it)."""

    def __init__(self, name: str, cfg: EngineConfig, engine=None, host: str = "127.0.0.1"):
        from workers.engine import make_engine

        self.name = name
        self.cfg = cfg
        self.host = host
        tracing.setup()  # this process exports its own spans (OTEL_* env), children of the job's
        self.engine = engine or make_engine(cfg, host, name)
        self.active: dict[str, int] = {}  # request id -> tokens its engine made so far
        self.stats = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        self.log: list[dict] = []  # per finished request: id, times, tokens (bounded)
        self.info: WorkerInfo | None = None
        self.server = StreamServer(self.generate, host)

    async def ready(self) -> WorkerInfo:
        """Measures the engine and opens the request stream once (the first call), then says
        what the engine client needs."""
        if self.info is None:
            profile = await self.profile()
            self.info = WorkerInfo(self.name, self.engine.kv_endpoints(), await self.server.start(), profile,
                                   self.cfg.block_size, self.engine.kv_bytes_per_token())
        return self.info

    async def profile(self) -> EngineProfile:
        """Prefill seconds per token and per request (random prompts of two lengths, one token
        out: the slope and the rest), decode seconds per step at each of PROFILE_BATCHES (random
        prompts, a fixed number of tokens); each the best of PROFILE_RUNS, and the step never
        smaller at a larger batch. An engine that knows its own speed (a simulated one) says it
        instead."""
        known = self.engine.known_profile()
        if known is not None:
            return known
        rng = random.Random(0)
        vocab = self.engine.vocab_size()

        def prompt(n: int) -> list[int]:
            return [rng.randrange(4, vocab) for _ in range(n)]

        n = max(PROFILE_SHORT_PROMPT + 8, min(256, self.cfg.max_model_len - PROFILE_DECODE_TOKENS - 8))
        prefill: dict[int, float] = {}
        for size in (PROFILE_SHORT_PROMPT, n):
            runs = []
            for k in range(PROFILE_RUNS):
                t0 = time.perf_counter()
                await self._last(GenRequest(f"profile-prefill-{size}-{k}", prompt(size), 1, ignore_eos=True))
                runs.append(time.perf_counter() - t0)
            prefill[size] = min(runs)
        steps: dict[int, float] = {}
        for b in PROFILE_BATCHES:
            runs = []
            for k in range(PROFILE_RUNS):
                reqs = [GenRequest(f"profile-b{b}-{k}-{i}", prompt(8), PROFILE_DECODE_TOKENS, ignore_eos=True)
                        for i in range(b)]
                ends = await asyncio.gather(*(self._last(r) for r in reqs))
                runs.append(statistics.median((c.finished_at - c.first_token_at) / (PROFILE_DECODE_TOKENS - 1)
                                              for c in ends))
            steps[b] = max([min(runs), *steps.values()])
        short, long_ = prefill[PROFILE_SHORT_PROMPT], prefill[n]
        per_token = max((long_ - short) / (n - PROFILE_SHORT_PROMPT), long_ / n / 10)
        return EngineProfile(per_token, steps, max(0.0, short - PROFILE_SHORT_PROMPT * per_token),
                             self.cfg.max_num_seqs)

    async def _last(self, req: GenRequest) -> GenChunk:
        last = None
        async for chunk in self.engine.generate(req):
            last = chunk
        return last

    async def generate(self, req: GenRequest):
        self.active[req.request_id] = 0
        submitted = time.time()
        # not made current: an async generator resumes in its caller's context at each yield
        span = tracing.server_span("loom.engine.generate", req.trace, loom__worker=self.name,
                                   gen_ai__usage__input_tokens=len(req.prompt_ids))
        made = self._counted(req.request_id, self.engine.generate(req))
        out = quiet(made) if req.quiet else batched(made, self.cfg.stream_interval_ms / 1000, self.cfg.stream_max_tokens)
        sent = 0
        try:
            async for chunk in out:
                sent += 1
                self.stats["generated_tokens"] += len(chunk.token_ids)
                if chunk.finished:
                    self._record(req, chunk, submitted, sent)
                    tracing.set_attrs(span, loom__prefix__cached_tokens=chunk.cached_tokens)
                yield chunk
        finally:
            self.active.pop(req.request_id, None)
            span.end()

    async def _counted(self, request_id: str, chunks):
        async for chunk in chunks:
            self.active[request_id] = self.active.get(request_id, 0) + len(chunk.token_ids)
            yield chunk

    def _record(self, req: GenRequest, chunk: GenChunk, submitted: float, chunks: int) -> None:
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += chunk.prompt_tokens
        self.stats["cached_tokens"] += chunk.cached_tokens
        self.log.append({"request_id": req.request_id, "submitted": submitted,
                         "traceparent": req.trace.get("traceparent", ""),
                         "first_token_at": chunk.first_token_at, "finished_at": chunk.finished_at,
                         "prompt_tokens": chunk.prompt_tokens, "cached_tokens": chunk.cached_tokens,
                         "tokens": self.active.get(req.request_id, 0), "chunks": chunks, "quiet": req.quiet})
        del self.log[:-1000]

    async def hold(self, request_id: str, prompt_ids: list[int], tokens: int,
                   hold_s: float | None = None) -> KVHold | None:
        """Keeps the blocks of ``prompt_ids``' first ``tokens`` tokens for a peer to pull, for
        ``hold_s`` seconds (None: the engine's ``kv_hold_s``): runs them (plus the next token, so
        every held block is a cache hit) for one token. None when the engine kept nothing."""
        req = GenRequest(request_id, prompt_ids[:tokens + 1], 1, kv_params=HoldRequest(tokens, hold_s).to_params())
        last = await self._last(req)
        kept = (last.kv_params or {}).get(HOLD_KEY) if last is not None else None
        return KVHold.from_dict(kept) if kept else None

    async def abort(self, request_id: str) -> int:
        """Stops the request; returns the tokens its engine made (0 for one already ended)."""
        made = self.active.get(request_id, 0)
        await self.engine.abort(request_id)
        return made

    async def health(self) -> dict:
        """``state`` ok, or errored with the engine's error (a dead engine takes no requests)."""
        try:
            await self.engine.check_health()
        except Exception as e:  # noqa: BLE001 - whatever the engine raised is the answer
            return {"state": "errored", "error": f"{type(e).__name__}: {e}", "active": len(self.active)}
        return {"state": "ok", "active": len(self.active)}

    async def reset_prefix_cache(self) -> bool:
        return await self.engine.reset_prefix_cache()

    def load(self) -> EngineLoad:
        """Requests in the engine now (this worker's count, exact) and the scheduler's last report."""
        return EngineLoad(active=len(self.active), **self.engine.scheduler())

    def shutdown(self) -> None:
        """Stops the engine (its core process too); the actor is killed next."""
        self.server.close()
        self.engine.shutdown()

    def pid(self) -> int:
        return os.getpid()

    def counters(self) -> dict:
        return {"name": self.name, "active": len(self.active), **self.stats}

    def request_log(self) -> list[dict]:
        return list(self.log)

    def step_samples(self) -> list[StepSample]:
        """The engine's last steps as it timed them (bench.sim_profile fits a profile to them)."""
        return self.engine.step_samples()

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return self.engine.encode(text, bos)

    def detokenize(self, ids: list[int]) -> str:
        return self.engine.detokenize(ids)

    def eos_token_id(self) -> int | None:
        return self.engine.eos_token_id()


@ray.remote(max_concurrency=1000)
class WorkerActor(EngineWorker):
    """One engine per actor, on the GPUs of its reservation (one per tensor-parallel rank; its
    engine's rank processes run beside the actor). Started with max_restarts
    (cluster/runtime.py): an actor whose engine died exits, and Ray starts it again, engine and all."""

    def __init__(self, name: str, cfg: EngineConfig):
        super().__init__(name, cfg, host=ray.util.get_node_ip_address())

    async def generate(self, req: GenRequest):
        try:
            async for chunk in super().generate(req):
                yield chunk
        except Exception:
            await self.health()  # exits if the engine is dead
            raise

    def reservation(self) -> str | None:
        """The id of the placement group this worker runs in (cluster/reservation.py), if any."""
        return ray.get_runtime_context().get_placement_group_id()

    async def health(self) -> dict:
        state = await super().health()
        if state["state"] == "errored":  # a dead engine never comes back by itself
            asyncio.get_running_loop().call_later(0.2, os._exit, 1)
        return state
