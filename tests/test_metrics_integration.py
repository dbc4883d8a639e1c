"""Loom's metrics reach Ray's Prometheus endpoint after a real forked job."""
from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from conftest import METRICS_PORT

from orchestrator.driver.records import JobRequest

pytestmark = pytest.mark.integration


def scrape() -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def value(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^(ray_)?{name}(\{{[^}}]*{labels}[^}}]*\}})? ", line) or \
                re.match(rf"^(ray_)?{name}\{{[^}}]*{labels}[^}}]*\}} ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_job_metrics_are_exported(service):
    rec = await service.run(JobRequest(prompt="Q: 12*3+45*6\n"))
    assert rec.status == "done"
    deadline, text = time.time() + 90, ""
    while time.time() < deadline:
        text = scrape()
        if value(text, "loom_jobs_total", 'status="done"') >= 1 and value(text, "loom_threads_started_total") >= 2:
            break
        await asyncio.sleep(2)
    assert value(text, "loom_jobs_total", 'status="done"') >= 1, text[-2000:]
    assert value(text, "loom_threads_started_total") >= 2
    assert value(text, "loom_tokens_total", 'kind="cached"') > 0
    assert value(text, "loom_fork_width_count") >= 1
    assert value(text, "loom_time_to_first_token_seconds_count") >= 3
