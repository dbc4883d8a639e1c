"""What a platform team sees: `loom serve` exporting to a real trace server (Arize Phoenix) and
scraped by a real Prometheus, a few forked jobs, and headless-Chromium screenshots of one job's
trace and of Loom's metrics, saved to docs/ (or --out).

    python -m bench.screenshots [--out docs] [--jobs 6]

Needs Phoenix (scripts/install.sh puts it in .tools/phoenix), Debian's prometheus and chromium
(installed with apt-get here when missing and run as root).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.common import free_port
from bench.prometheus_server import PrometheusServer
from bench.trace_server import PhoenixServer

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "loom"
RAY_TARGETS = "/tmp/ray/prom_metrics_service_discovery.json"  # Ray writes its metrics endpoints here
QUESTIONS = ["Q: 23*4+56*7+8*9", "Q: 12*3+45*6", "Q: 71*5+6*8+9*4+2*3", "Q: 34*7+8*9", "Q: 905*9+14*3+220*6",
             "Q: 5*6+7*8+9*2"]
PANELS = ["sum by (kind) (rate(ray_loom_tokens_total[1m]))", "sum by (outcome) (ray_loom_forks_total)",
          "histogram_quantile(0.95, sum by (le) (rate(ray_loom_time_to_first_token_seconds_bucket[1m])))"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                       "--no-install-recommends chromium", shell=True, check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("chromium")
    if found is None:
        sys.exit("screenshots: no chromium on PATH (Debian: apt-get install chromium)")
    return found


def screenshot(url: str, out: Path, wait_ms: int = 20000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1600,1000",
                        f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                       check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"saved {out}")


def start_loom(port: int, phoenix: PhoenixServer | None, log: Path, project: str = PROJECT,
               workers: int = 2) -> subprocess.Popen:
    """`loom serve` (the shipped config) on ``port``, exporting its spans to ``phoenix`` (None: off)."""
    otel = {"OTEL_TRACES_EXPORTER": "none"} if phoenix is None else {
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.url, "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"}
    env = {**os.environ, **otel, "LOOM_PORT": str(port), "LOOM_NUM_WORKERS": str(workers),
           "RAY_AUTH_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config",
                                 str(ROOT / "cluster" / "serve_config.yaml")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"loom serve exited ({proc.returncode})")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    sys.exit("loom serve did not become healthy")


def run_jobs(url: str, n: int) -> list[dict]:
    records = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for question in (QUESTIONS * n)[:n]:
            job = client.post("/v1/jobs", json={"prompt": question + "\n"}).json()["id"]
            while (rec := client.get(f"/v1/jobs/{job}").json())["status"] in ("queued", "running"):
                time.sleep(0.2)
            records.append(rec)
            print(f"{rec['id']} {rec['status']} {rec['result'].get('answer')}")
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
    parser.add_argument("--jobs", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loom-screens-"))
    phoenix, port = PhoenixServer(work), free_port()
    phoenix.start()
    phoenix.wait_ready()
    loom = start_loom(port, phoenix, work / "loom.log")
    prometheus = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}", loom)
        prometheus = PrometheusServer(work, sd_file=RAY_TARGETS)
        prometheus.start()
        records = run_jobs(f"http://127.0.0.1:{port}", args.jobs)
        time.sleep(20)  # Ray exports metrics every few seconds; Prometheus scrapes every second
        forked = max(records, key=lambda r: sum(n["kind"] == "thread" for n in r["dag"]["nodes"]))
        screenshot(trace_url(phoenix, forked["id"]), args.out / "trace-phoenix.png", wait_ms=30000)
        screenshot(graph_url(prometheus), args.out / "metrics-prometheus.png")
    finally:
        loom.terminate()
        loom.wait(timeout=120)
        if prometheus is not None:
            prometheus.stop()
        phoenix.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
