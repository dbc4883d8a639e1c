"""The Engine protocol (workers/engine.py) over a simulated engine: a Scheduler stepping in real
time on the worker's event loop, each step sleeping the profile's seconds for its batch (times
``sim_time_scale``: a slowed clock for clusters one machine cannot step in real time), its
outputs streamed as vLLM's DELTA outputs are (those its reader has not taken yet merged), its KV
events published as vLLM's.

Needs the model's directory for its tokenizer (``tokenizer.json``) and shape (``config.json``:
KV bytes per token, BOS and EOS), never its weights. On a machine too slow to keep up, a step
loop more than a step behind its own clock starts it again from now (the engine runs slower).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from orchestrator.protocol.engine import EngineProfile, KVEndpoints, StepSample
from orchestrator.protocol.generation import GenChunk, GenRequest
from workers.config import EngineConfig
from workers.engine import MAX_STEP_SAMPLES
from workers.sim import profile
from workers.sim.block_cache import BlockCache
from workers.sim.events import EventPublisher
from workers.sim.front_end import FrontEndLoad
from workers.sim.host_load import HostLoad
from workers.sim.scheduler import Finish, Output, Scheduler, SimRequest
from workers.sim.script import Script

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1}


@dataclass(frozen=True)
class ModelShape:
    """What a simulated engine needs of a model: its KV size and special tokens."""

    kv_bytes_per_token: int
    bos: int | None
    eos: int | None

    @classmethod
    def of(cls, model: str, dtype: str) -> ModelShape:
        path = Path(model) / "config.json"
        if not path.is_file():
            raise ValueError(f"engine_backend sim needs a model directory with config.json and tokenizer.json: {model}")
        c = json.loads(path.read_text())
        head = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        kv_heads = c.get("num_key_value_heads", c["num_attention_heads"])
        width = DTYPE_BYTES.get(dtype if dtype != "auto" else c.get("dtype", c.get("torch_dtype", "bfloat16")), 2)
        return cls(2 * c["num_hidden_layers"] * kv_heads * head * width, c.get("bos_token_id"), c.get("eos_token_id"))


@dataclass(frozen=True)
class Delivery:
    output: Output
    at: float  # wall clock at the end of the step that made it


async def _merged(queue: asyncio.Queue[Delivery]) -> tuple[list[int], Delivery]:
    """The next delivery, with every one queued behind it up to a request's end: their tokens
    and the last of them (vLLM's output collector merges DELTA outputs its reader has not taken)."""
    d = await queue.get()
    tokens = list(d.output.token_ids)
    while d.output.finish is None and not queue.empty():
        d = queue.get_nowait()
        tokens += d.output.token_ids
    return tokens, d


class SimEngine:
    def __init__(self, cfg: EngineConfig, host: str = "127.0.0.1"):
        self.shape = ModelShape.of(cfg.model, cfg.dtype)
        self.tokenizer = Tokenizer.from_file(str(Path(cfg.model) / "tokenizer.json"))
        self.profile = profile.load(cfg.sim_profile)
        self.scale = cfg.sim_time_scale  # real seconds per simulated second
        blocks = (cfg.num_kv_blocks or self.profile.kv_tokens // cfg.block_size
                  or cfg.kv_cache_gib * 2**30 // (cfg.block_size * self.shape.kv_bytes_per_token))
        self.cache = BlockCache(blocks, cfg.block_size)
        self.sched = Scheduler(self.cache, self.profile, cfg.max_num_seqs, cfg.max_model_len)
        self.script = Script.load(cfg.sim_documents, self.encode, self.shape.eos, self.shape.bos)
        self.events = EventPublisher(host, cfg.block_size)
        self.streams: dict[str, asyncio.Queue[Delivery]] = {}
        self.stepping: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.host = HostLoad(self.profile.host_busy_share, cfg.core_nice) if self.profile.host_busy_share else None
        self.front = (FrontEndLoad(self.profile.worker_cpu_s_per_step, self.profile.worker_cpu_s_per_token)
                      if self.profile.worker_cpu_s_per_step or self.profile.worker_cpu_s_per_token else None)
        self.steps: deque[StepSample] = deque(maxlen=MAX_STEP_SAMPLES)

    async def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]:
        sim = SimRequest(req.request_id, list(req.prompt_ids), self.script.continuation(req.prompt_ids) or [],
                         self.script.filler, req.max_tokens, self._stops(req.stop),
                         None if req.ignore_eos else self.shape.eos)
        await asyncio.sleep(self.profile.arrival_s * self.scale)
        self.sched.add(sim)
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.streams[req.request_id] = queue
        self._start()
        first, finished = 0.0, False
        try:
            while not finished:
                tokens, d = await _merged(queue)
                first = first or (d.at if tokens else 0.0)
                finished = d.output.finish is not None
                yield GenChunk(request_id=req.request_id, token_ids=tokens, finished=finished,
                               finish_reason=d.output.finish.value if finished else None,
                               stop_reason=d.output.stop_reason, prompt_tokens=len(sim.prompt),
                               cached_tokens=sim.cached, first_token_at=first,
                               finished_at=d.at if finished else 0.0)
        finally:
            self.streams.pop(req.request_id, None)
            if not finished:  # the caller stopped reading: the engine stops the request
                self.sched.abort(req.request_id)

    def _stops(self, stop: list[str]) -> dict[tuple[int, ...], str]:
        return {tuple(self.encode(s)): s for s in stop if s}

    def _start(self) -> None:
        self.wake.set()
        if self.stepping is None:
            self.events.start()
            self.stepping = asyncio.create_task(self._step_loop())

    async def _step_loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            plan = self.sched.schedule() if self.sched.has_work() else None
            if plan is None or not plan.work:
                self._busy(False)
                self.wake.clear()
                await self.wake.wait()
                self._busy(True)
                deadline = loop.time()
                continue
            step_s = plan.seconds * self.scale
            deadline += step_s
            await asyncio.sleep(deadline - loop.time())
            if loop.time() - deadline > step_s:  # more than a step behind: the machine cannot keep up
                deadline = loop.time()
            if plan.decoding:
                self.steps.append(StepSample(plan.decoding, plan.prefilled, plan.seconds))
            outputs = self.sched.complete(plan)
            if self.front is not None:
                self.front.charge(sum(len(o.token_ids) for o in outputs))
            self._deliver(outputs)
            await self.events.publish(self.cache.take_events())

    def _busy(self, busy: bool) -> None:
        if self.host is not None:
            self.host.set_busy(busy)
        if busy and self.front is not None:
            self.front.resume()

    def _deliver(self, outputs: list[Output]) -> None:
        now = time.time()
        for out in outputs:
            queue = self.streams.get(out.request.id)
            if queue is not None:
                queue.put_nowait(Delivery(out, now))

    async def abort(self, request_id: str) -> None:
        req = self.sched.abort(request_id)
        if req is not None:  # (its blocks go back; freeing publishes nothing)
            self._deliver([Output(req, [], Finish.ABORT)])

    async def check_health(self) -> None:
        if self.stepping is not None and self.stepping.done():
            raise RuntimeError(f"simulated engine's step loop ended: {self.stepping.exception()!r}")

    async def reset_prefix_cache(self) -> bool:
        cleared = self.cache.clear()
        await self.events.publish(self.cache.take_events())
        return cleared

    def scheduler(self) -> dict:
        return self.sched.load()

    def step_samples(self) -> list[StepSample]:
        return list(self.steps)

    def known_profile(self) -> EngineProfile:
        """Its profile's speed on its clock (a slowed clock: real seconds, as a worker would measure)."""
        return EngineProfile(self.profile.prefill_s_per_token * self.scale,
                             {b: s * self.scale for b, s in self.profile.decode_s.items()},
                             self.profile.prefill_step_s * self.scale, self.sched.max_num_seqs)

    def kv_bytes_per_token(self) -> int:
        return self.shape.kv_bytes_per_token

    def kv_endpoints(self) -> KVEndpoints:
        return self.events.endpoints

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=bos).ids

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def eos_token_id(self) -> int | None:
        return self.shape.eos

    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def shutdown(self) -> None:
        if self.stepping is not None:
            self.stepping.cancel()
        if self.host is not None:
            self.host.close()
        self.events.close()
