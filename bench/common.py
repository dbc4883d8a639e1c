"""What the benches share: the machine they ran on, the servers they start, running work at a
concurrency, and the latency figures the comparisons print."""
from __future__ import annotations

import asyncio
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now on ``host`` (for a server a bench starts, or one nothing listens on)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_answering(url: str, proc: subprocess.Popen, timeout: float, log: Callable[[], str] = str) -> None:
    """Returns once GET ``url`` answers 200; raises RuntimeError (with ``log()``) if the server's
    process exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}): {log()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered {url} within {timeout} s: {log()}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of process ``pid`` and everything under it, by process
    title (``ray::WorkerActor``, ``VLLM::EngineCore``, ``raylet``, ...)."""
    import psutil

    root = psutil.Process(pid)
    out: dict[str, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            title = (proc.cmdline() or [proc.name()])[0].split()[0] or proc.name()
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        name = Path(title).name if "/" in title else title
        if name.startswith("ray::"):  # a Ray worker's title names the task running now: ray::Actor.method
            name = name.split(".")[0]
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def cpu_since(pid: int, before: dict[str, float]) -> dict[str, float]:
    """CPU seconds by process title spent since ``before`` (an earlier ``cpu_seconds(pid)``)."""
    return {name: s - before.get(name, 0.0) for name, s in cpu_seconds(pid).items()}


def ms_per_job(spent: dict[str, float], jobs: int) -> dict[str, float]:
    """CPU milliseconds per job by process title, for those that spent over 50 ms in all."""
    return {name: round(s * 1000 / max(jobs, 1), 2) for name, s in sorted(spent.items()) if s > 0.05}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


async def run_concurrently(ask: Callable[[object], Awaitable], items: Sequence,
                           concurrency: int) -> tuple[list, list[float], float]:
    """``ask(item)`` for every item, at most ``concurrency`` at once: the results (in item order),
    each call's seconds (in finishing order) and the wall time."""
    gate, latencies = asyncio.Semaphore(concurrency), []

    async def one(item):
        async with gate:
            t0 = time.perf_counter()
            result = await ask(item)
            latencies.append(time.perf_counter() - t0)
            return result

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in items))
    return results, latencies, time.perf_counter() - t0


def quantile(values: Sequence[float], q: float) -> float:
    """The value at ``q`` (0..1) of the sorted values, rounded down; 0.0 for none."""
    return sorted(values)[int(q * (len(values) - 1))] if values else 0.0


def p90(values: Sequence[float]) -> float:
    return quantile(values, 0.9)


def latency_figures(latencies: Sequence[float]) -> dict:
    return {"mean_s": round(statistics.mean(latencies), 3), "p50_s": round(statistics.median(latencies), 3),
            "p90_s": round(p90(latencies), 3)}


def save_figure(fig, title: str, out: Path) -> None:
    """A benchmark's figure: the first panel's legend, the title (with the machine), written as a PNG."""
    import matplotlib.pyplot as plt

    fig.axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
