"""Waiting in tests: for a job over HTTP, as a client would (poll ``GET /v1/jobs/{id}`` until it
ends), and for any condition."""
from __future__ import annotations

import asyncio
import inspect
import time

import httpx

LIVE = ("queued", "running")


def final_record(client: httpx.Client, job_id: str, timeout: float = 300.0, prefix: str = "") -> dict:
    """The job's record once it has ended; answers other than 200 (a 503 while the store is down,
    say) are polled through. Fails the test if the job has not ended within ``timeout``."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = client.get(f"{prefix}/v1/jobs/{job_id}")
        if last.status_code == 200 and last.json()["status"] not in LIVE:
            return last.json()
        time.sleep(0.2)
    seen = f"{last.status_code} {last.text[:2000]}" if last is not None else "no answer"
    raise AssertionError(f"{job_id} did not end within {timeout} s; last seen: {seen}")


def wait_until(cond, timeout: float, every: float = 0.05) -> None:
    """Returns once ``cond()`` is true; fails the test if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


async def until(cond, timeout: float, what: str, every: float = 0.2) -> float:
    """Seconds until ``cond()`` (awaited, if it is a coroutine function's) is true; fails the test,
    naming ``what``, if not within ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        met = cond()
        if await met if inspect.isawaitable(met) else met:
            return time.monotonic() - t0
        await asyncio.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")
