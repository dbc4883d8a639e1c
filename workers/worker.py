"""A Ray actor that owns one engine (one GPU, or the CPU) and streams generations.

``generate`` is an async generator: called with ``.options(num_returns="streaming")`` it
streams ``GenChunk`` deltas to the caller as the engine produces them, so the job can
charge tokens and cancel mid-thread. Requests run concurrently inside the engine's batch.
"""
from __future__ import annotations

import time

import ray

from orchestrator import tracing
from workers.engine import EngineConfig, GenChunk, GenRequest


class EngineWorker:
    """The worker's logic, usable without Ray (the actor below wraps it)."""

    def __init__(self, name: str, cfg: EngineConfig, engine=None):
        from workers.engine import VLLMEngine

        self.name = name
        tracing.setup()  # this process exports its own spans (OTEL_* env), children of the job's
        self.engine = engine or VLLMEngine(cfg)
        self.active: set[str] = set()
        self.stats = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        self.log: list[dict] = []  # per finished request: id, times, tokens (bounded)

    async def generate(self, req: GenRequest):
        self.active.add(req.request_id)
        submitted = time.time()
        # not made current: an async generator resumes in its caller's context at each yield
        span = tracing.tracer().start_span("loom.engine.generate", context=tracing.extract(req.trace))
        tracing.set_attrs(span, loom__worker=self.name, gen_ai__usage__input_tokens=len(req.prompt_ids))
        try:
            async for chunk in self.engine.generate(req):
                self.stats["generated_tokens"] += len(chunk.token_ids)
                if chunk.finished:
                    self._record(req, chunk, submitted)
                    tracing.set_attrs(span, loom__prefix__cached_tokens=chunk.cached_tokens)
                yield chunk
        finally:
            self.active.discard(req.request_id)
            span.end()

    def _record(self, req: GenRequest, chunk: GenChunk, submitted: float) -> None:
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += chunk.prompt_tokens
        self.stats["cached_tokens"] += chunk.cached_tokens
        self.log.append({"request_id": req.request_id, "submitted": submitted,
                         "traceparent": req.trace.get("traceparent", ""),
                         "first_token_at": chunk.first_token_at, "finished_at": chunk.finished_at,
                         "prompt_tokens": chunk.prompt_tokens, "cached_tokens": chunk.cached_tokens})
        del self.log[:-1000]

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def health(self) -> dict:
        """``state`` ok, or errored with the engine's error (a dead engine takes no requests)."""
        try:
            await self.engine.check_health()
        except Exception as e:  # noqa: BLE001 - whatever the engine raised is the answer
            return {"state": "errored", "error": f"{type(e).__name__}: {e}", "active": len(self.active)}
        return {"state": "ok", "active": len(self.active)}

    def load(self) -> dict:
        return {"name": self.name, "active": len(self.active), **self.stats}

    def request_log(self) -> list[dict]:
        return list(self.log)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return self.engine.encode(text, bos)

    def decode(self, ids: list[int]) -> str:
        return self.engine.decode(ids)

    def eos_token_id(self) -> int | None:
        return self.engine.eos_token_id()


@ray.remote(max_concurrency=1000)
class WorkerActor(EngineWorker):
    """One engine per actor; schedule with num_gpus=1 on GPU nodes."""

    async def ready(self) -> str:
        return self.name
