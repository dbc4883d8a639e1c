"""Brings up Loom's actors on a Ray cluster: the coordinator and one worker per engine.

Workers and the coordinator are named, detached actors in the ``loom`` namespace, so every
ingress replica and every driver (``loom run``, a Ray Job) shares the same ones.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import ray

from cluster import reservation
from cluster.config import ConfigError, LoomConfig
from orchestrator.budget import coordinator as coord_mod
from orchestrator.budget.ops import BudgetOps
from orchestrator.budget.replica import ReplicatedBudget
from orchestrator.driver.job import JobRunner
from orchestrator.plan import detect
from orchestrator.protocol.engine import WorkerInfo
from orchestrator.routing.engine_client import WorkerEngineClient
from orchestrator.routing.kv_events import SharedIndex
from orchestrator.routing.kv_index import KVIndex
from orchestrator.routing.kv_pulls import KVPulls
from orchestrator.routing.link import LinkModel
from orchestrator.routing.placement import Placer
from orchestrator.routing.pool import WorkerPool
from workers.worker import WorkerActor


def worker_names(cfg: LoomConfig) -> list[str]:
    return [f"{cfg.worker_prefix}-{i}" for i in range(cfg.num_workers)]


def cpu_binds(cfg: LoomConfig) -> list[str]:
    """Per worker, the CPU cores its engine's threads are bound to: the configured lists, or
    (several CPU engines or ranks on one machine) an even split of this machine's cores, so that
    they do not spin on the same cores; "" (vLLM's own choice) for one engine or GPUs."""
    if cfg.worker_cpu_binds:
        return list(cfg.worker_cpu_binds)
    cores = sorted(os.sched_getaffinity(0))
    ranks = cfg.num_workers * cfg.engine.tensor_parallel_size
    if ranks == 1 or cfg.worker_num_gpus > 0 or len(cores) < ranks:
        return [""] * cfg.num_workers
    return even_split(cores, cfg.num_workers, cfg.engine.tensor_parallel_size)


def even_split(cores: list[int], n: int, ranks: int = 1) -> list[str]:
    """``cores`` dealt out in turn to ``n`` engines of ``ranks`` ranks each, as each engine's
    VLLM_CPU_OMP_THREADS_BIND (a rank's cores comma-separated, its ranks "|"-separated)."""
    groups = [",".join(map(str, cores[i::n * ranks])) for i in range(n * ranks)]
    return ["|".join(groups[e * ranks:(e + 1) * ranks]) for e in range(n)]


@dataclass(frozen=True)
class CoreSplit:
    """This machine's cores: those kept for Loom's own processes, and each engine's bind."""
    controller: list[int]
    engines: list[str]


def core_split(cfg: LoomConfig, cores: list[int]) -> CoreSplit | None:
    """The first ``controller_cpus`` of ``cores`` for Loom's processes and the rest split evenly
    among the CPU engines; None when there is nothing to split (GPU engines, binds given, none
    kept, or fewer cores left than engines)."""
    if cfg.worker_num_gpus > 0 or cfg.worker_cpu_binds or not cfg.controller_cpus:
        return None
    kept, rest = cores[:cfg.controller_cpus], cores[cfg.controller_cpus:]
    if len(rest) < cfg.num_workers * cfg.engine.tensor_parallel_size:
        return None
    return CoreSplit(kept, even_split(rest, cfg.num_workers, cfg.engine.tensor_parallel_size))


def pin_controller(cfg: LoomConfig) -> LoomConfig:
    """Called by a process about to start a local Ray cluster: binds it, so every process Ray
    starts, to the kept cores (core_split), and returns the config binding the engines to the
    rest; the config unchanged when there is nothing to split. Ray's processes inherit the
    binding; the engines' compute threads bind themselves (VLLM_CPU_OMP_THREADS_BIND)."""
    split = core_split(cfg, sorted(os.sched_getaffinity(0)))
    if split is None:
        return cfg
    os.sched_setaffinity(0, split.controller)
    return replace(cfg, worker_cpu_binds=split.engines)


def start_workers(cfg: LoomConfig) -> tuple[dict, list[WorkerInfo]]:
    """Named worker actors (created if missing, each in its reservation); waits until each engine
    is loaded and measured."""
    handles, reserved = {}, {}
    for name, bind, res in zip(worker_names(cfg), cpu_binds(cfg), reservations(cfg)):
        handles[name] = _actor(name)
        if handles[name] is None:
            reserved[name] = res.reserve()
            handles[name] = WorkerActor.options(
                name=name, namespace=coord_mod.NAMESPACE, lifetime="detached", get_if_exists=True,
                max_restarts=-1,  # a new engine, in the same reservation
                **res.actor_options(reserved[name]),
            ).remote(name, cfg.worker_engine(bind))
    ray.get([h.counters.remote() for h in handles.values()])  # every engine loaded, then
    for name, group in reserved.items():  # another process's worker of that name may have won
        reservation.keep_if_used(group, ray.get(handles[name].reservation.remote()))
    return handles, [ray.get(h.ready.remote()) for h in handles.values()]  # measured one at a time


def reservations(cfg: LoomConfig) -> list[reservation.Reservation]:
    """Per worker, what it holds: a GPU per tensor-parallel rank (worker_num_gpus each), its CPUs
    and its custom resources."""
    needs = cfg.worker_resources or [{}] * cfg.num_workers
    gpus = cfg.worker_num_gpus * cfg.engine.tensor_parallel_size
    return [reservation.Reservation(name, gpus, cfg.worker_num_cpus, dict(custom))
            for name, custom in zip(worker_names(cfg), needs)]


def start_coordinator(cfg: LoomConfig):
    return coord_mod.get_or_create(cfg.max_threads_in_flight, cfg.coordinator_resources)


def load_tokenizer(cfg: LoomConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model)


def declared_format(model: str) -> str | None:
    """The plan format a model's own files declare (``parallel_format`` in its generation config,
    then its config), for a model in a local directory; None where they say nothing."""
    for name in ("generation_config.json", "config.json"):
        path = Path(model) / name
        if path.is_file():
            value = json.loads(path.read_text()).get(detect.FORMAT_FIELD)
            if value:
                return value
    return None


def served_format(cfg: LoomConfig, tokenizer) -> str:
    """The format Loom serves this model in: configured, else declared, else told by its
    tokenizer; a ConfigError where it does not fit the model (never sequential decoding)."""
    try:
        return detect.resolve(cfg.format, declared_format(cfg.model), set(tokenizer.get_added_vocab()), cfg.model)
    except detect.FormatError as e:
        raise ConfigError(f"format: {e}") from None


@dataclass
class Loom:
    """What ``start`` brings up for this process: the job runner over the cluster's workers and
    coordinator, and the pieces an operator or a bench looks at."""

    runner: JobRunner
    pool: WorkerPool
    placer: Placer
    coordinator: object  # the coordinator actor's handle


def start_routing(cfg: LoomConfig, placer_type: type[Placer] = Placer) -> tuple[WorkerPool, Placer]:
    """The workers (created if missing, shared by every process on the cluster), a KV index fed
    by their engines' events, and the placer that reads it."""
    handles, infos = start_workers(cfg)
    index = SharedIndex(KVIndex(cfg.engine.block_size))
    link = LinkModel(bytes_per_s=cfg.kv_link_gbps * 1e9) if cfg.transfer_on() else None
    placer = placer_type(list(handles), index, link=link)
    pool = WorkerPool(handles, placer, index)
    for info in infos:
        pool.watch(info)
    return pool, placer


def start(cfg: LoomConfig, placer_type: type[Placer] = Placer, budget: BudgetOps | None = None) -> Loom:
    """The coordinator and the workers, and this process's job runner over them (its budget the
    driver's replicated accounts, unless given). The model's format is checked first."""
    tokenizer = load_tokenizer(cfg)
    fmt = served_format(cfg, tokenizer)
    coordinator = start_coordinator(cfg)
    budget = budget or ReplicatedBudget(coordinator)
    pool, placer = start_routing(cfg, placer_type)
    engine = WorkerEngineClient(pool, placer, KVPulls(pool, placer), cfg.model_name)
    runner = JobRunner(engine, budget, tokenizer, cfg.engine.max_model_len, cfg.job_budget(), cfg.model_name,
                       default_format=fmt, fork_policy=cfg.fork_policy)
    return Loom(runner, pool, placer, coordinator)


def shutdown_actors(cfg: LoomConfig, coordinator: bool = True, grace_s: float = 15.0) -> None:
    """Stops the config's workers (each engine shut down, then the actor killed, so no engine
    process outlives it, and its reservation released) and the coordinator."""
    workers = [w for w in (_actor(name) for name in worker_names(cfg)) if w is not None]
    groups = [w.reservation.remote() for w in workers]
    stopping = [w.shutdown.remote() for w in workers]
    ray.wait(stopping + groups, num_returns=len(stopping) + len(groups), timeout=grace_s)
    for actor in workers + ([_actor(coord_mod.COORDINATOR_NAME)] if coordinator else []):
        if actor is not None:
            ray.kill(actor, no_restart=True)
    for group in groups:
        with contextlib.suppress(ray.exceptions.RayError):
            reservation.release(ray.get(group, timeout=0))


def _actor(name: str):
    try:
        return ray.get_actor(name, namespace=coord_mod.NAMESPACE)
    except ValueError:
        return None
