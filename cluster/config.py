"""Loom's configuration: typed, read from YAML and LOOM_* environment variables.

One config drives ``loom run``, ``loom serve`` and the Helm chart's serveConfigV2. The cluster's
settings sit at the top level; one engine's settings in ``engine:`` (workers/config.py).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

import yaml

from cluster.ingress import Ingress
from orchestrator.budget.policy import JobBudget
from orchestrator.plan.published import FORMATS
from orchestrator.protocol.fork import ForkPolicy
from workers.config import PER_WORKER, EngineBackend, EngineConfig, EngineConfigError

BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"  # the models the project ships
DEFAULT_MODEL = str(BUNDLED_MODELS / "loom-arith")


class ConfigError(ValueError):
    pass


@dataclass
class LoomConfig:
    model_name: str = "loom-arith"
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(DEFAULT_MODEL))
    num_workers: int = 1
    worker_prefix: str = "loom-worker"  # worker actors are named {worker_prefix}-{i}
    # per worker, the CPU cores of its engine (VLLM_CPU_OMP_THREADS_BIND, e.g. ["0", "1"]); empty:
    # several CPU engines split this machine's cores evenly, one engine lets vLLM choose
    worker_cpu_binds: list = field(default_factory=list)
    # CPU engines on the machine where Loom starts Ray: cores kept for Loom's own processes (Ray,
    # the controller, the coordinator, the workers' Python side), the engines bound to the rest,
    # when each engine still gets a core and no binds are given (cluster/runtime.py: pin_controller)
    controller_cpus: int = 1
    worker_num_gpus: float = 0.0  # per tensor-parallel rank: a worker reserves this times the size
    worker_num_cpus: float = 0.0
    # per worker, Ray custom resources its actor needs (e.g. [{"node-a": 1}, {"node-b": 1}] to put
    # each on a node started with that resource); empty: none
    worker_resources: list = field(default_factory=list)
    max_threads_in_flight: int = 64
    # how many of a fork's threads run at once, unless a request asks otherwise: "adaptive" (the
    # width whose estimated cost to the job and to the other requests is least, from the engines'
    # measured speeds and loads: orchestrator/routing/fork_width.py), "eager" (all, as far as the
    # budget allows) or "never" (every fork refused: the model writes its threads itself)
    fork_policy: ForkPolicy = ForkPolicy.ADAPTIVE
    # Ray custom resources the coordinator actor needs (e.g. {"node-a": 0.01} to keep it on a node
    # started with that resource); empty: wherever Ray puts it (it is restarted elsewhere if lost)
    coordinator_resources: dict = field(default_factory=dict)
    # KV transfer between workers (workers/kv): a thread placed away from its prefix pulls the
    # prefix's blocks from the worker holding them when the cost model says that beats recomputing.
    # "auto": on for two or more CPU engines; off for one engine (no peer, while the connector costs
    # every step) and for GPU engines (the NCCL path has not run on hardware); "on" / "off" force it.
    kv_transfer: str = "auto"
    kv_link_gbps: float = 1.0  # first guess of the link's GB/s, replaced by what transfers measure
    format: str | None = None  # the plan format served; None: as the model's files say (cluster/runtime.py)
    budget: dict = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    # how requests reach the Serve app (cluster/ingress.py): "haproxy" (Ray Serve's HAProxy ingress,
    # straight to the ingress replica) or "serve-proxy" (Serve's Python proxy actor); read where Loom
    # starts Ray (`loom serve`), and by the Helm chart for its pods' environment
    ingress: Ingress = Ingress.HAPROXY
    redis_url: str = ""
    max_request_bytes: int = 1 << 20  # larger HTTP bodies get a 413 before they are read
    # job store retention: finished records are kept store_ttl_s seconds (both stores); the
    # in-process store keeps at most store_max_records, dropping the oldest finished first
    store_max_records: int = 10000
    store_ttl_s: float = 86400.0

    @property
    def model(self) -> str:
        return self.engine.model

    def worker_engine(self, cpu_bind: str) -> EngineConfig:
        """One worker's engine settings: the config's, its CPU cores, and the KV connector."""
        return replace(self.engine, cpu_bind=cpu_bind, kv_connector=self.transfer_on())

    def transfer_on(self) -> bool:
        """auto: CPU engines with a peer (one engine has nobody to pull from, and the connector
        costs every step)."""
        if self.engine.engine_backend is EngineBackend.SIM:  # a simulated engine holds no KV to send
            return False
        auto = self.worker_num_gpus == 0 and self.num_workers > 1
        return self.kv_transfer == "on" or (self.kv_transfer == "auto" and auto)

    def job_budget(self) -> JobBudget:
        return JobBudget.from_dict(self.budget)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["engine"]["engine_backend"] = self.engine.engine_backend.value
        d["fork_policy"] = self.fork_policy.value
        d["ingress"] = self.ingress.value
        for key in PER_WORKER:
            del d["engine"][key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LoomConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(_unknown(unknown))
        try:
            engine = EngineConfig.from_dict({"model": DEFAULT_MODEL, **d.get("engine", {})})
        except EngineConfigError as e:
            raise ConfigError(f"engine: {e}") from None
        cfg = cls(**{**d, "engine": replace(engine, model=bundled(engine.model)),
                     "fork_policy": _choice(ForkPolicy, "fork_policy", d.get("fork_policy", ForkPolicy.ADAPTIVE)),
                     "ingress": _choice(Ingress, "ingress", d.get("ingress", Ingress.HAPROXY))})
        cfg.validate()
        return cfg

    def validate_ranks(self) -> None:
        """A tensor-parallel engine needs a core list per rank, or a whole GPU per rank."""
        ranks = self.engine.tensor_parallel_size
        if ranks > 1 and any(len(str(b).split("|")) != ranks for b in self.worker_cpu_binds):
            raise ConfigError(f"worker_cpu_binds: one core list per rank, '|'-separated ({ranks} ranks: e.g. "
                              f"'0|1'), not {self.worker_cpu_binds!r}")
        if ranks > 1 and self.worker_num_gpus not in (0, 1):
            raise ConfigError(f"worker_num_gpus: a whole GPU per rank with tensor_parallel_size {ranks} "
                              f"(0 or 1), not {self.worker_num_gpus!r}")

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ConfigError("num_workers must be >= 1")
        if self.worker_cpu_binds and len(self.worker_cpu_binds) != self.num_workers:
            raise ConfigError(f"worker_cpu_binds has {len(self.worker_cpu_binds)} entries for {self.num_workers} workers")
        self.validate_ranks()
        if self.worker_resources and (len(self.worker_resources) != self.num_workers or not all(
                isinstance(r, dict) and all(isinstance(v, int | float) and v >= 0 for v in r.values())
                for r in self.worker_resources)):
            raise ConfigError(f"worker_resources must hold one mapping of resource -> amount per worker "
                              f"({self.num_workers}), not {self.worker_resources!r}")
        if not (isinstance(self.coordinator_resources, dict) and all(
                isinstance(v, int | float) and v >= 0 for v in self.coordinator_resources.values())):
            raise ConfigError(f"coordinator_resources must map resource -> amount, not {self.coordinator_resources!r}")
        if self.controller_cpus < 0:
            raise ConfigError(f"controller_cpus must be >= 0, not {self.controller_cpus!r}")
        if not Path(self.model).exists() and "/" not in self.model.strip("/"):
            raise ConfigError(f"engine.model {self.model!r} is neither a directory nor a hub id")
        if self.store_max_records < 1:
            raise ConfigError("store_max_records must be >= 1")
        if not self.store_ttl_s > 0:
            raise ConfigError("store_ttl_s must be > 0")
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)} (or null: the model's), not {self.format!r}")
        if self.kv_transfer not in ("auto", "on", "off"):
            raise ConfigError(f"kv_transfer must be auto, on or off, not {self.kv_transfer!r}")
        if self.kv_transfer == "on" and self.engine.engine_backend is EngineBackend.SIM:
            raise ConfigError("kv_transfer: on needs real engines (engine_backend: vllm); a simulated one sends no KV")
        if not self.kv_link_gbps > 0:
            raise ConfigError("kv_link_gbps must be > 0")
        if self.max_request_bytes < 1024:
            raise ConfigError("max_request_bytes must be >= 1024")
        self.job_budget()


def _unknown(keys: set[str]) -> str:
    """Names unknown keys; one that is an engine setting says where it goes."""
    engine_keys = {f.name for f in fields(EngineConfig)}
    moved = sorted(keys & engine_keys)
    hint = f" ({', '.join(moved)}: engine settings, under 'engine:')" if moved else ""
    return f"unknown config key(s): {', '.join(sorted(keys))}{hint}"


def _choice(kind: type[Enum], key: str, value: object):
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{key} must be one of {', '.join(c.value for c in kind)}, not {value!r}") from None


def bundled(model: str) -> str:
    """A shipped model's name (``loom-arith-mv``) as its directory; any other value as given."""
    shipped = BUNDLED_MODELS / model
    if not Path(model).exists() and "/" not in model and (shipped / "config.json").exists():
        return str(shipped)
    return model


ENV = {"LOOM_MODEL": ("engine", "model", str), "LOOM_KV_CACHE_GIB": ("engine", "kv_cache_gib", int),
       "LOOM_NUM_WORKERS": ("", "num_workers", int), "LOOM_REDIS_URL": ("", "redis_url", str),
       "LOOM_PORT": ("", "port", int), "LOOM_FORMAT": ("", "format", str),
       "LOOM_KV_TRANSFER": ("", "kv_transfer", str), "LOOM_FORK_POLICY": ("", "fork_policy", str),
       "LOOM_INGRESS": ("", "ingress", str)}


def load(path: str | os.PathLike | None = None, overrides: dict | None = None) -> LoomConfig:
    """Defaults < YAML file < LOOM_* environment < explicit overrides (``engine`` merged key by key)."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping")
    for var, (section, key, typ) in ENV.items():
        if var in os.environ:
            _merge(data, {section: {key: typ(os.environ[var])}} if section else {key: typ(os.environ[var])})
    _merge(data, overrides or {})
    return LoomConfig.from_dict(data)


def _merge(data: dict, more: dict) -> None:
    for key, value in more.items():
        if key == "engine" and isinstance(value, dict) and isinstance(data.get("engine"), dict):
            data["engine"] = {**data["engine"], **value}
        else:
            data[key] = value
