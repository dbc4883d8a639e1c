"""`loom serve` as the observability benches start it: the shipped config on a free port, its
spans exported over OTLP/HTTP to a trace server (or not), and where its Ray writes its metrics."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.common import wait_answering

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "loom"  # the trace server's project (openinference.project.name)
RAY_SESSION = Path("/tmp/ray/session_latest")  # the Ray that `loom serve` started


def start_loom(port: int, otlp: str | None, log: Path, project: str = PROJECT, workers: int = 2,
               config: Path = ROOT / "cluster" / "serve_config.yaml") -> subprocess.Popen:
    """`loom serve` (``config``: the shipped one) on ``port``, exporting its spans over OTLP/HTTP to
    ``otlp`` (a trace server's base URL; None: export off)."""
    otel = {"OTEL_TRACES_EXPORTER": "none"} if otlp is None else {
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"}
    env = {**os.environ, **otel, "LOOM_PORT": str(port), "LOOM_NUM_WORKERS": str(workers),
           "RAY_AUTH_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config", str(config)], env=env, stdout=out,
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
