"""What a platform team sees: `loom serve` exporting to a real trace server (Arize Phoenix) and
scraped by a real Prometheus, a few forked jobs, and headless-Chromium screenshots of one job's
trace and of Loom's metrics, saved to docs/ (or --out).

    python -m bench.screenshots [--out docs] [--seconds 120]

Needs Phoenix (scripts/install.sh puts it in .tools/phoenix), Debian's prometheus and chromium
(installed with apt-get here when missing and run as root).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.browser import screenshot
from bench.common import free_port, stop_process
from bench.loom_server import PROJECT, ray_metrics_port, start_loom, wait_healthy
from bench.prometheus_server import PrometheusServer
from bench.trace_server import PhoenixServer

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["Q: 23*4+56*7+8*9", "Q: 12*3+45*6", "Q: 71*5+6*8+9*4+2*3", "Q: 34*7+8*9", "Q: 905*9+14*3+220*6",
             "Q: 5*6+7*8+9*2"]
PANELS = ["sum by (kind) (rate(ray_loom_tokens_total[30s]))", "sum by (outcome) (ray_loom_forks_total)"]
TRACE_DRAWN = "document.body.innerText.includes('loom.engine.generate')"  # the span tree, down to the workers
GRAPHS_DRAWN = f"document.querySelectorAll('.graph svg path').length >= {len(PANELS)}"


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
        if (root := phoenix.job_root(PROJECT, job_id)) is not None:
            projects = httpx.get(f"{phoenix.url}/v1/projects", timeout=30).json()["data"]
            project_id = next(p["id"] for p in projects if p["name"] == PROJECT)
            return f"{phoenix.url}/projects/{project_id}/traces/{root['context']['trace_id']}"
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
