"""The Ray Serve application: a thin ingress deployment around JobService.

``loom serve`` and serveConfigV2 (Helm) both use ``cluster.app:app_builder`` with the
LoomConfig mapping as its args.
"""
from __future__ import annotations

import asyncio

import ray
from ray import serve

from cluster import runtime
from cluster.config import LoomConfig
from orchestrator.service.api import build_app
from orchestrator.service.health import Health, assess
from orchestrator.service.jobs import JobService
from orchestrator.service.store import InProcessJobStore
from orchestrator.telemetry import tracing

HEALTH_TIMEOUT_S = 5.0


def make_store(cfg: LoomConfig):
    """RedisJobStore when ``redis_url`` (or LOOM_REDIS_URL) is set, else the in-process store;
    both keep finished records ``store_ttl_s`` (the in-process one at most ``store_max_records``)."""
    import os

    from orchestrator.service.redis_store import RedisJobStore

    url = cfg.redis_url or os.environ.get("LOOM_REDIS_URL", "")
    if url:
        return RedisJobStore(url, ttl_s=cfg.store_ttl_s)
    return InProcessJobStore(max_records=cfg.store_max_records, ttl_s=cfg.store_ttl_s)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class LoomIngress:
    async def __init__(self, config: dict):
        self.cfg = LoomConfig.from_dict(config)
        tracing.setup()  # OTEL_TRACES_EXPORTER=otlp|console; off by default
        self.loom = runtime.start(self.cfg)
        self.service = JobService(self.loom.runner, make_store(self.cfg))
        await self.service.recover()  # queued jobs resume; orphaned running ones are marked failed
        self.sweeper = asyncio.create_task(self.service.sweep_forever())  # and later ones too

    async def __del__(self):
        """Serve's graceful shutdown: running jobs are written back as failed, with the reason."""
        if hasattr(self, "service"):  # Serve may call this before __init__ finished
            self.sweeper.cancel()
            await self.service.shutdown()

    def __serve_build_asgi_app__(self):
        return build_app(self.service, self.cfg.model_name, health=self.health,
                         max_request_bytes=self.cfg.max_request_bytes)

    async def health(self) -> Health:
        """Asks every worker and the coordinator, each within HEALTH_TIMEOUT_S; says which
        replica answered and which of each engine's KV event batches it has applied."""
        pool = self.loom.pool
        names = pool.names()
        answers = await asyncio.gather(*(_ask(pool.handle(n).health.remote()) for n in names))
        coordinator = await _ask(self.loom.coordinator.cluster.remote())
        if "state" not in coordinator:
            coordinator = {"state": "ok", **coordinator}
        applied = pool.kv_events_applied()  # how current this replica's view of each engine's cache is
        workers = {n: {**a, "kv_events_applied": applied[n]} for n, a in zip(names, answers)}
        return assess(workers, coordinator, self.cfg.model_name, self.loom.placer.name)


async def _ask(ref) -> dict:
    """An actor's answer, or why there is none: dead (the actor is gone), unresponsive (timeout)."""
    try:
        return await asyncio.wait_for(ref, HEALTH_TIMEOUT_S)
    except TimeoutError:
        return {"state": "unresponsive", "error": f"no answer in {HEALTH_TIMEOUT_S}s"}
    except ray.exceptions.RayError as e:
        return {"state": "dead", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def app_builder(args: dict):
    """Serve application builder: ``import_path: cluster.app:app_builder``."""
    return LoomIngress.bind(LoomConfig.from_dict(dict(args or {})).to_dict())
