"""Shared fixtures: one Ray cluster, two vLLM engines (worker actors, one CPU core each) and
one Serve app per test session, started lazily by the tests that need them."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
SERVE_PORT = 8765
METRICS_PORT = 8766
TRACE_PROJECT = "loom-tests"  # the trace server's project every process of the session exports to


@pytest.fixture(scope="session")
def loom_config():
    from cluster.config import load

    return load(overrides={"port": SERVE_PORT, "num_workers": 2})  # placement across engines, everywhere


@pytest.fixture(scope="session")
def trace_server(tmp_path_factory):
    """A real OTLP trace server (Arize Phoenix, bench/trace_server.py), started before Ray so that
    every process of the session (Serve replicas, workers) exports its spans to it, as a cluster
    whose OTEL_* variables name a team's collector does. Spans sent while it is still starting are
    retried by the exporters; tests that read it call ``wait_ready``."""
    from bench.trace_server import PhoenixServer

    server = PhoenixServer(tmp_path_factory.mktemp("phoenix"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(trace_server, loom_config):
    """Ray as `loom serve` starts it: Serve's ingress as the config says (cluster/ingress.py)."""
    import ray

    from cluster import ingress

    ingress.use(loom_config.ingress)
    os.environ.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                      OTEL_EXPORTER_OTLP_ENDPOINT=trace_server.url, OTEL_BSP_SCHEDULE_DELAY="200",
                      OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={TRACE_PROJECT}")
    ray.init(num_cpus=4, include_dashboard=False, namespace="loom", log_to_driver=False,
             _metrics_export_port=METRICS_PORT)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def loom(ray_cluster, loom_config):
    """The cluster's coordinator and two workers, and this process's runner, pool and placer."""
    from cluster import runtime

    started = runtime.start(loom_config)
    yield started
    runtime.shutdown_actors(loom_config)


@pytest.fixture(scope="session")
def runner(loom):
    return loom.runner


@pytest.fixture
def service(runner):
    from orchestrator.service.jobs import JobService
    from orchestrator.service.store import InProcessJobStore

    return JobService(runner, InProcessJobStore())


@pytest.fixture(scope="session")
def serve_url(runner, loom_config):
    from ray import serve

    from cluster.app import app_builder

    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    serve.run(app_builder(loom_config.to_dict()), name="loom", route_prefix="/")
    yield f"http://127.0.0.1:{SERVE_PORT}"
    serve.shutdown()
