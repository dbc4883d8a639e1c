"""The Ray Serve application: a thin ingress deployment around JobService.

``loom serve`` and serveConfigV2 (Helm) both use ``cluster.app:app_builder`` with the
LoomConfig mapping as its args.
"""
from __future__ import annotations

from ray import serve

from cluster import runtime
from cluster.config import LoomConfig
from orchestrator import tracing
from orchestrator.api import build_app
from orchestrator.service import JobService
from orchestrator.store import InProcessJobStore


def make_store(cfg: LoomConfig):
    """RedisJobStore when ``redis_url`` (or LOOM_REDIS_URL) is set, else the in-process store."""
    import os

    from orchestrator.store import RedisJobStore

    url = cfg.redis_url or os.environ.get("LOOM_REDIS_URL", "")
    return RedisJobStore(url) if url else InProcessJobStore()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class LoomIngress:
    async def __init__(self, config: dict):
        self.cfg = LoomConfig.from_dict(config)
        tracing.setup()  # OTEL_TRACES_EXPORTER=otlp|console; off by default
        self.runner = runtime.make_runner(self.cfg)
        self.service = JobService(self.runner, make_store(self.cfg))
        await self.service.recover()  # queued jobs resume; orphaned running ones are marked failed

    def __serve_build_asgi_app__(self):
        return build_app(self.service, self.cfg.model_name, self.cfg.format, health=self.health)

    async def health(self) -> dict:
        return {"workers": list(self.runner.workers), "model": self.cfg.model_name,
                "cluster": await self.runner.coord.cluster.remote()}


def app_builder(args: dict):
    """Serve application builder: ``import_path: cluster.app:app_builder``."""
    return LoomIngress.bind(LoomConfig.from_dict(dict(args or {})).to_dict())
