"""A real Prometheus server, for the tests and the observability scripts: loopback, a free port, a temp dir, scraping given targets
every second. The binary: ``$LOOM_PROMETHEUS`` if set, else ``prometheus`` on PATH (Debian's
package, which ``scripts/install.sh`` installs where apt-get can)."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import free_port, stop_process, wait_answering

MISSING = ("no prometheus: the metrics tests need the real server, found none in $LOOM_PROMETHEUS or on PATH. "
           "`make install` installs Debian's package as root (apt-get install -y prometheus), or point "
           "LOOM_PROMETHEUS at one")


@dataclass
class PrometheusServer:
    dir: Path
    targets: list[str]  # host:port, each scraped at /metrics
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which(os.environ.get("LOOM_PROMETHEUS", "prometheus"))
        if binary is None:
            raise RuntimeError(MISSING)
        config = self.dir / "prometheus.yml"
        config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                          f"scrape_configs: [{{job_name: loom, static_configs: [{{targets: {self.targets}}}]}}]\n")
        with open(self.dir / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir}/data",
                                          f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_answering(f"{self.url}/-/ready", self.proc, timeout, self.log)

    def query(self, promql: str) -> list[dict]:
        """An instant query's result vector; raises on a PromQL error (naming it)."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(f"{promql}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def value(self, promql: str) -> float:
        """The query's single value (0 when it has no sample)."""
        result = self.query(promql)
        return sum(float(r["value"][1]) for r in result)

    def names(self) -> set[str]:
        return set(httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=30).json()["data"])

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
