"""Brings up Loom's actors on a Ray cluster: the coordinator and one worker per engine.

Workers and the coordinator are named, detached actors in the ``loom`` namespace, so every
ingress replica and every driver (``loom run``, a Ray Job) shares the same ones.
"""
from __future__ import annotations

import ray

from cluster.config import LoomConfig
from orchestrator import coordinator as coord_mod
from workers.worker import WorkerActor


def worker_name(i: int) -> str:
    return f"loom-worker-{i}"


def start_workers(cfg: LoomConfig) -> dict:
    """Named worker actors (created if missing); waits until each engine is loaded."""
    handles = {}
    for i in range(cfg.num_workers):
        name = worker_name(i)
        handles[name] = WorkerActor.options(
            name=name, namespace=coord_mod.NAMESPACE, lifetime="detached", get_if_exists=True,
            num_gpus=cfg.worker_num_gpus, num_cpus=cfg.worker_num_cpus,
        ).remote(name, cfg.engine())
    ray.get([h.ready.remote() for h in handles.values()])
    return handles


def start_coordinator(cfg: LoomConfig):
    return coord_mod.get_or_create(cfg.max_threads_in_flight)


def load_tokenizer(cfg: LoomConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model)


def make_runner(cfg: LoomConfig):
    from orchestrator.job import JobRunner

    return JobRunner(start_workers(cfg), start_coordinator(cfg), load_tokenizer(cfg),
                     cfg.max_model_len, cfg.job_budget(), cfg.block_size, cfg.model_name)


def shutdown_actors(cfg: LoomConfig) -> None:
    for name in [worker_name(i) for i in range(cfg.num_workers)] + [coord_mod.COORDINATOR_NAME]:
        try:
            ray.kill(ray.get_actor(name, namespace=coord_mod.NAMESPACE))
        except ValueError:
            pass
