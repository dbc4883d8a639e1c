"""Loom's metrics in a real Prometheus: it scrapes Ray's metrics endpoint while forked jobs run
through the Serve app, and the ``ray_loom_*`` series are read back with PromQL; every query of
the Grafana dashboard (docs/grafana-loom.json) parses and names only series that exist."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from conftest import METRICS_PORT
from polling import final_record

from bench.prometheus_server import PrometheusServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-loom.json"
METRICS_SOURCE = ROOT / "orchestrator" / "telemetry" / "metrics.py"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "5m"}


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory):
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{METRICS_PORT}"])
    server.start()
    yield server
    server.stop()


def run(client: httpx.Client, body: dict) -> dict:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    rec = final_record(client, r.json()["id"])
    assert rec["status"] == "done", rec
    return rec


def eventually(prometheus: PrometheusServer, promql: str, at_least: float, timeout: float = 120.0) -> float:
    """The query's value once it reaches ``at_least`` (Ray exports every few seconds, Prometheus
    scrapes every second); fails the test with the last value seen."""
    deadline, seen = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        seen = prometheus.value(promql)
        if seen >= at_least:
            return seen
        time.sleep(1)
    raise AssertionError(f"{promql} = {seen} after {timeout} s, wanted >= {at_least}")


def test_forked_jobs_show_in_prometheus(serve_url, prometheus):
    before = {q: prometheus.value(q) for q in ('sum(ray_loom_jobs_total{status="done"})',
                                               'sum(ray_loom_forks_total{outcome="narrowed"})')}
    with httpx.Client(base_url=serve_url, timeout=300) as client:
        wide = run(client, {"prompt": "Q: 31*4+56*7+8*9\n"})
        narrow = run(client, {"prompt": "Q: 32*4+56*7+8*9\n", "budget": {"max_width": 2}})
    assert sum(n["kind"] == "thread" for n in wide["dag"]["nodes"]) == 3
    assert any("wave" in note or "narrow" in note for note in narrow["notes"]), narrow["notes"]
    done = 'sum(ray_loom_jobs_total{status="done"})'
    eventually(prometheus, done, before[done] + 2)
    narrowed = 'sum(ray_loom_forks_total{outcome="narrowed"})'
    eventually(prometheus, narrowed, before[narrowed] + 1)
    assert prometheus.value('sum(ray_loom_forks_total{outcome="admitted"})') >= 1
    assert prometheus.value("sum(ray_loom_threads_started_total)") >= 6
    in_flight = "sum(ray_loom_threads_started_total) - sum(ray_loom_threads_ended_total)"
    assert prometheus.query(in_flight) and prometheus.value(in_flight) == 0  # every thread has ended
    tokens = {r["metric"]["kind"]: float(r["value"][1]) for r in
              prometheus.query("sum by (kind) (ray_loom_tokens_total)")}
    assert tokens["generated"] > 0 and tokens["prompt"] > tokens["cached"] > 0
    recomputed = prometheus.value("sum(ray_loom_recomputed_prefix_tokens_total)")
    assert 0 < recomputed <= tokens["prompt"] - tokens["cached"]
    assert prometheus.value("sum(ray_loom_fork_admission_seconds_count)") >= 2
    mean_admission = "sum(ray_loom_fork_admission_seconds_sum) / sum(ray_loom_fork_admission_seconds_count)"
    assert 0 < prometheus.value(mean_admission) < 60  # a coordinator round trip
    prometheus.query("sum by (outcome) (ray_loom_kv_pulls_total)")  # parses; pulls happen when placement chooses


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


# series that appear only once a pull was made, which placement decides (the KV transfer tests make them)
ONLY_AFTER_A_PULL = {"ray_loom_kv_pulls_total", "ray_loom_kv_pull_bytes_total"}


def test_every_dashboard_query_parses_and_names_existing_series(serve_url, prometheus):
    with httpx.Client(base_url=serve_url, timeout=300) as client:
        refused = run(client, {"prompt": "Q: 33*4+56*7\n", "budget": {"min_thread_tokens": 1_000_000}})
    assert any("refused" in note for note in refused["notes"]), refused["notes"]
    eventually(prometheus, 'sum(ray_loom_forks_total{outcome="refused"})', 1)
    eventually(prometheus, "sum(ray_loom_budget_rejections_total)", 1)
    names = prometheus.names()
    declared = set(re.findall(r'"(loom_\w+)"', METRICS_SOURCE.read_text()))
    queries = dashboard_queries()
    assert len(queries) >= 10
    for expr in queries:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        prometheus.query(expr)  # raises on a syntax error
        for metric in set(re.findall(r"\bray_loom_\w+", expr)):
            if metric in ONLY_AFTER_A_PULL and metric not in names:
                assert metric.removeprefix("ray_") in declared, f"{expr}: {metric} is not one of Loom's metrics"
                continue
            assert metric in names, f"{expr}: no series {metric} in Prometheus"
