"""What a platform team sees: `loom serve` exporting to a real trace server (Arize Phoenix) and
scraped by a real Prometheus, a few forked jobs, and headless-Chromium screenshots of one job's
trace and of Loom's metrics, saved to docs/ (or --out).

    python -m bench.screenshots [--out docs] [--seconds 120]

Needs Phoenix (scripts/install.sh puts it in .tools/phoenix), Debian's prometheus and chromium
(installed with apt-get here when missing and run as root).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.browser import screenshot
from bench.common import free_port, stop_process, wait_answering
from bench.prometheus_server import PrometheusServer
from bench.trace_server import PhoenixServer

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "loom"
RAY_SESSION = Path("/tmp/ray/session_latest")  # the Ray that `loom serve` started
QUESTIONS = ["Q: 23*4+56*7+8*9", "Q: 12*3+45*6", "Q: 71*5+6*8+9*4+2*3", "Q: 34*7+8*9", "Q: 905*9+14*3+220*6",
             "Q: 5*6+7*8+9*2"]
PANELS = ["sum by (kind) (rate(ray_loom_tokens_total[30s]))", "sum by (outcome) (ray_loom_forks_total)"]
TRACE_DRAWN = "document.body.innerText.includes('loom.engine.generate')"  # the span tree, down to the workers
GRAPHS_DRAWN = f"document.querySelectorAll('.graph svg path').length >= {len(PANELS)}"


def start_loom(port: int, otlp: str | None, log: Path, project: str = PROJECT, workers: int = 2) -> subprocess.Popen:
    """`loom serve` (the shipped config) on ``port``, exporting its spans over OTLP/HTTP to ``otlp``
    (a trace server's base URL; None: export off)."""
    otel = {"OTEL_TRACES_EXPORTER": "none"} if otlp is None else {
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"}
    env = {**os.environ, **otel, "LOOM_PORT": str(port), "LOOM_NUM_WORKERS": str(workers),
           "RAY_AUTH_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config",
                                 str(ROOT / "cluster" / "serve_config.yaml")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    try:
        wait_answering(f"{url}/healthz", proc, timeout)
    except RuntimeError as e:
        sys.exit(f"loom serve: {e}")


def ray_metrics_port() -> int:
    """The metrics export port of the Ray node `loom serve` started (Ray writes it in its session dir)."""
    (found,) = RAY_SESSION.glob("metrics_export_port_*")
    return int(found.read_text().strip())


def run_jobs(url: str, seconds: float) -> list[dict]:
    """Forked jobs one after another for ``seconds`` (the metrics then have a curve to draw)."""
    records, deadline = [], time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=300) as client:
        while time.monotonic() < deadline:
            question = QUESTIONS[len(records) % len(QUESTIONS)]
            job = client.post("/v1/jobs", json={"prompt": question + "\n"}).json()["id"]
            while (rec := client.get(f"/v1/jobs/{job}").json())["status"] in ("queued", "running"):
                time.sleep(0.2)
            records.append(rec)
    print(f"{len(records)} jobs, {sum(r['status'] == 'done' for r in records)} done")
    return records


def trace_url(phoenix: PhoenixServer, job_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roots = phoenix.spans(PROJECT, name="loom.job", attribute=f'loom.job.id:"{job_id}"')
        if roots:
            projects = httpx.get(f"{phoenix.url}/v1/projects", timeout=30).json()["data"]
            project_id = next(p["id"] for p in projects if p["name"] == PROJECT)
            return f"{phoenix.url}/projects/{project_id}/traces/{roots[0]['context']['trace_id']}"
        time.sleep(1)
    sys.exit(f"no trace of {job_id} in Phoenix")


def graph_url(prometheus: PrometheusServer) -> str:
    parts = [f"g{i}.expr={quote(expr)}&g{i}.tab=0&g{i}.range_input=5m" for i, expr in enumerate(PANELS)]
    return f"{prometheus.url}/graph?{'&'.join(parts)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--seconds", type=float, default=120, help="how long to run jobs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="loom-screens-"))
    phoenix, port = PhoenixServer(work), free_port()
    phoenix.start()
    phoenix.wait_ready()
    loom = start_loom(port, phoenix.url, work / "loom.log")
    prometheus = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}", loom)
        prometheus = PrometheusServer(work, [f"127.0.0.1:{ray_metrics_port()}"])
        prometheus.start()
        records = run_jobs(f"http://127.0.0.1:{port}", args.seconds)
        time.sleep(15)  # Ray exports metrics every few seconds; Prometheus scrapes every second
        forked = max(records, key=lambda r: sum(n["kind"] == "thread" for n in r["dag"]["nodes"]))
        screenshot(trace_url(phoenix, forked["id"]), args.out / "trace-phoenix.png", TRACE_DRAWN)
        screenshot(graph_url(prometheus), args.out / "metrics-prometheus.png", GRAPHS_DRAWN)
    finally:
        stop_process(loom, timeout=120)
        if prometheus is not None:
            prometheus.stop()
        phoenix.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
