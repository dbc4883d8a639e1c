"""A real OTLP trace server, for the tests and the observability scripts: Arize Phoenix, on loopback, a free port, a temp dir.

Phoenix lives in a virtual environment of its own (its pins do not fit beside vLLM's):
``scripts/install.sh`` makes it in ``.tools/phoenix``; ``$LOOM_PHOENIX`` may name another
``phoenix`` executable. It takes spans over OTLP/HTTP at ``{url}/v1/traces`` (the exporter's
``OTEL_EXPORTER_OTLP_ENDPOINT`` is ``url``), files them under the project named by the resource
attribute ``openinference.project.name``, and gives them back from its own REST API
(``GET /v1/projects/{project}/spans``), which is what the tests read.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import free_port, stop_process, wait_answering

ROOT = Path(__file__).resolve().parent.parent
MISSING = ("no Phoenix trace server: the trace tests need the real one. `make install` (scripts/install.sh) "
           "puts it in .tools/phoenix; or set LOOM_PHOENIX to a `phoenix` executable")


def find_phoenix() -> str | None:
    if env := os.environ.get("LOOM_PHOENIX"):
        return shutil.which(env)
    local = ROOT / ".tools" / "phoenix" / "bin" / "phoenix"
    return str(local) if local.is_file() else shutil.which("phoenix")


@dataclass
class PhoenixServer:
    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the server; ``wait_ready`` waits for it (spans sent before are retried by the exporter)."""
        binary = find_phoenix()
        if binary is None:
            raise RuntimeError(MISSING)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))}
        env.update(PHOENIX_WORKING_DIR=str(self.dir), PHOENIX_SQL_DATABASE_URL=f"sqlite:///{self.dir}/phoenix.db",
                   PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(self.port), PHOENIX_GRPC_PORT="0",
                   PHOENIX_TELEMETRY_ENABLED="false", PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
                   PHOENIX_LOG_MIGRATIONS="false")
        with open(self.dir / "phoenix.log", "wb") as log:
            self.proc = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_answering(f"{self.url}/readyz", self.proc, timeout, self.log)

    def spans(self, project: str, **filters) -> list[dict]:
        """Every span of ``project`` that matches ``filters`` (the REST API's: trace_id=...,
        attribute='key:json-value'), all pages; [] while the project does not exist yet."""
        out, cursor = [], None
        while True:
            params = {**filters, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            r = httpx.get(f"{self.url}/v1/projects/{project}/spans", params=params, timeout=30)
            if r.status_code == 404:
                return []
            r.raise_for_status()
            body = r.json()
            out += body["data"]
            cursor = body.get("next_cursor")
            if not cursor:
                return out

    def job_root(self, project: str, job_id: str) -> dict | None:
        """The root span (``loom.job``) of the job's trace, once the server has it."""
        roots = self.spans(project, name="loom.job", attribute=f'loom.job.id:"{job_id}"')
        return roots[0] if roots else None

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        path = self.dir / "phoenix.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
