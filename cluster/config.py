"""Loom's configuration: typed, read from YAML and LOOM_* environment variables.

One config drives ``loom run``, ``loom serve`` and the Helm chart's serveConfigV2.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from orchestrator.budget.policy import JobBudget
from workers.engine import EngineConfig

BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"  # the models the project ships
DEFAULT_MODEL = str(BUNDLED_MODELS / "loom-arith")


class ConfigError(ValueError):
    pass


@dataclass
class LoomConfig:
    model: str = DEFAULT_MODEL
    model_name: str = "loom-arith"
    num_workers: int = 1
    worker_prefix: str = "loom-worker"  # worker actors are named {worker_prefix}-{i}
    # per worker, the CPU cores of its engine (VLLM_CPU_OMP_THREADS_BIND, e.g. ["0", "1"]); empty:
    # several CPU engines split this machine's cores evenly, one engine lets vLLM choose
    worker_cpu_binds: list = field(default_factory=list)
    # CPU engines on the machine where Loom starts Ray: cores kept for Loom's own processes (Ray,
    # the controller, the coordinator, the workers' Python side), the engines bound to the rest,
    # when each engine still gets a core and no binds are given (cluster/runtime.py:
    # pin_controller). Measured here, one engine on 2 cores: bench.peers' mean latency 11% lower
    # at concurrency 1, 18-24% more jobs/s at 32; 0 keeps none
    controller_cpus: int = 1
    # the niceness of each engine's vLLM engine-core process (its step loop): Ray starts its workers,
    # and so the engines, at nice 15, below the raylet and GCS (0), which then take the CPU from the
    # step loop on a loaded machine; null keeps Ray's. Going below 15 needs CAP_SYS_NICE (without
    # it the engine keeps Ray's and logs so). Measured here, one engine on 2 cores: 5-21% more jobs/s
    # at concurrency 32, 2-13% lower latency at 1 (docs/architecture.md)
    engine_core_nice: int | None = 0
    worker_num_gpus: float = 0.0
    worker_num_cpus: float = 0.0
    max_model_len: int = 1024
    # the shipped model is tiny; fp32 leaves fewer near-ties between batched and single decoding than bf16
    dtype: str = "float32"
    enforce_eager: bool = True
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 64
    block_size: int = 32
    num_kv_blocks: int = 0  # KV blocks per engine; 0: as many as memory allows (tests force evictions)
    max_threads_in_flight: int = 64
    # KV transfer between workers (workers/kv): a thread placed away from its prefix pulls the
    # prefix's blocks from the worker holding them (gloo on CPU, NCCL on GPU) when the cost model
    # says that beats recomputing. "auto": on for two or more CPU engines (tested), off for one
    # engine (no peer; the connector costs every step) and for GPU engines (the NCCL path has
    # not run on hardware yet); "on" / "off" force it.
    kv_transfer: str = "auto"
    kv_hold_s: float = 30.0  # a holder frees blocks no peer pulled after this
    kv_timeout_s: float = 10.0  # every wait of a transfer; past it the target recomputes
    kv_link_gbps: float = 1.0  # first guess of the link's GB/s, replaced by what transfers measure
    # a worker sends the tokens its engine produces within this many ms as one streamed chunk, or
    # as soon as the chunk holds stream_max_tokens (a thread's budget overshoots by less than that);
    # the first tokens and a request's end are never held back; 0 ms sends every engine output.
    # Measured in bench.engine_limit's split and README: under load, fewer chunks give the engine
    # the CPU that fetching them took (100 ms + 8 tokens: +28-43% jobs/s at concurrency 32 here)
    stream_interval_ms: float = 100.0
    stream_max_tokens: int = 8
    format: str = "threadweaver"
    budget: dict = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = ""
    max_request_bytes: int = 1 << 20  # larger HTTP bodies get a 413 before they are read
    # job store retention: finished records are kept store_ttl_s seconds (both stores); the
    # in-process store keeps at most store_max_records, dropping the oldest finished first
    store_max_records: int = 10000
    store_ttl_s: float = 86400.0

    def engine(self) -> EngineConfig:
        return EngineConfig(model=self.model, max_model_len=self.max_model_len, dtype=self.dtype,
                            enforce_eager=self.enforce_eager, kv_cache_gib=self.kv_cache_gib,
                            gpu_memory_utilization=self.gpu_memory_utilization,
                            max_num_seqs=self.max_num_seqs, block_size=self.block_size,
                            num_blocks=self.num_kv_blocks or None, kv_transfer=self.transfer_on(),
                            kv_hold_s=self.kv_hold_s, kv_timeout_s=self.kv_timeout_s,
                            stream_interval_s=self.stream_interval_ms / 1000,
                            stream_max_tokens=self.stream_max_tokens, core_nice=self.engine_core_nice)

    def transfer_on(self) -> bool:
        """auto: CPU engines with a peer (one engine has nobody to pull from, and the connector
        costs every step: measured in bench.peers, one CPU worker, concurrency 1)."""
        auto = self.worker_num_gpus == 0 and self.num_workers > 1
        return self.kv_transfer == "on" or (self.kv_transfer == "auto" and auto)

    def job_budget(self) -> JobBudget:
        return JobBudget.from_dict(self.budget)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoomConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        cfg = cls(**d)
        cfg.model = bundled(cfg.model)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ConfigError("num_workers must be >= 1")
        if self.worker_cpu_binds and len(self.worker_cpu_binds) != self.num_workers:
            raise ConfigError(f"worker_cpu_binds has {len(self.worker_cpu_binds)} entries for {self.num_workers} workers")
        if self.controller_cpus < 0:
            raise ConfigError(f"controller_cpus must be >= 0, not {self.controller_cpus!r}")
        if self.engine_core_nice is not None and not (isinstance(self.engine_core_nice, int)
                                                     and -20 <= self.engine_core_nice <= 19):
            raise ConfigError(f"engine_core_nice must be null or within -20..19, not {self.engine_core_nice!r}")
        if not Path(self.model).exists() and "/" not in self.model.strip("/"):
            raise ConfigError(f"model {self.model!r} is neither a directory nor a hub id")
        if self.store_max_records < 1:
            raise ConfigError("store_max_records must be >= 1")
        if not self.store_ttl_s > 0:
            raise ConfigError("store_ttl_s must be > 0")
        if self.kv_transfer not in ("auto", "on", "off"):
            raise ConfigError(f"kv_transfer must be auto, on or off, not {self.kv_transfer!r}")
        if not (self.kv_hold_s > 0 and self.kv_timeout_s > 0 and self.kv_link_gbps > 0):
            raise ConfigError("kv_hold_s, kv_timeout_s and kv_link_gbps must be > 0")
        if not 0 <= self.stream_interval_ms <= 1000:
            raise ConfigError(f"stream_interval_ms must be within 0..1000, not {self.stream_interval_ms!r}")
        if not 1 <= self.stream_max_tokens <= 4096:
            raise ConfigError(f"stream_max_tokens must be within 1..4096, not {self.stream_max_tokens!r}")
        if self.max_request_bytes < 1024:
            raise ConfigError("max_request_bytes must be >= 1024")
        self.job_budget()


def bundled(model: str) -> str:
    """A shipped model's name (``loom-arith-mv``) as its directory; any other value as given."""
    shipped = BUNDLED_MODELS / model
    if not Path(model).exists() and "/" not in model and (shipped / "config.json").exists():
        return str(shipped)
    return model


ENV = {"LOOM_MODEL": ("model", str), "LOOM_NUM_WORKERS": ("num_workers", int),
       "LOOM_REDIS_URL": ("redis_url", str), "LOOM_PORT": ("port", int),
       "LOOM_FORMAT": ("format", str), "LOOM_KV_CACHE_GIB": ("kv_cache_gib", int),
       "LOOM_KV_TRANSFER": ("kv_transfer", str)}


def load(path: str | os.PathLike | None = None, overrides: dict | None = None) -> LoomConfig:
    """Defaults < YAML file < LOOM_* environment < explicit overrides."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping")
    for var, (key, typ) in ENV.items():
        if var in os.environ:
            data[key] = typ(os.environ[var])
    data.update(overrides or {})
    return LoomConfig.from_dict(data)
