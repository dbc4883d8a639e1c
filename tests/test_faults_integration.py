"""Faults on the real stack, one process killed at a time (SIGKILL, as a node failure would):
a worker mid-thread, the coordinator mid-jobs, Redis mid-jobs. Each asserts that no accepted job
is lost, every job ends, answers are those of a run without the fault, and the service takes
new work again within a bound; the recovery time measured is printed."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest
import ray
from polling import final_record, until, wait_until
from ports import free_port
from processes import engine_cores, session_process
from redis_server import redis_server  # noqa: F401  (fixture)

from models.task import Question, Term
from orchestrator.driver.records import JobRequest
from orchestrator.protocol.fork import ForkPolicy

pytestmark = pytest.mark.integration
QUESTIONS = [Question((Term(300 + 71 * i, 7), Term(45 + i, 8), Term(999 - i, 9), Term(12, 3))) for i in range(6)]
EAGER = ForkPolicy.EAGER  # every fork runs, however loaded: threads on both workers when one is killed
RECOVERY_BOUND_S = 240  # a killed worker's engine is back (restarted, loaded, measured) within this


async def run_all(service, questions):
    return await asyncio.gather(*(service.run(JobRequest(prompt=q.prompt, fork_policy=EAGER)) for q in questions))


async def test_a_worker_killed_mid_thread_loses_no_job_and_comes_back(service, loom):
    reference = [r.result["text"] for r in await run_all(service, QUESTIONS)]
    victim = list(loom.pool.handles)[1]
    handle = loom.pool.handles[victim]
    pid = await handle.pid.remote()
    jobs = asyncio.gather(*(service.run(JobRequest(prompt=q.prompt, fork_policy=EAGER)) for q in QUESTIONS))
    await until(lambda: _active(handle), 120, "threads running on the victim")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    records = await jobs
    assert [r.status for r in records] == ["done"] * len(QUESTIONS), [r.error for r in records]
    assert [r.result["text"] for r in records] == reference  # re-run threads gave the same tokens
    retried = [n for r in records for n in r.dag["nodes"] if (n["placement"] or {}).get("attempts")]
    assert retried and all(a["worker"] == victim for n in retried for a in n["placement"]["attempts"])
    assert all(n["worker"] != victim or n["started"] > killed for n in retried)
    back = await until(lambda: _restarted(handle, pid), RECOVERY_BOUND_S, "the worker restarted")
    await until(lambda: _placeable(loom, victim), 60, "the engine client placing on it again")
    print(f"\nworker {victim} killed: {len(retried)} requests re-run elsewhere; engine back in {back:.1f} s")
    again = await service.run(JobRequest(prompt=QUESTIONS[0].prompt, fork_policy=EAGER))
    assert again.status == "done" and again.result["text"] == reference[0]


async def _active(handle) -> bool:
    return (await handle.load.remote()).active > 0


async def _restarted(handle, old_pid: int) -> bool:
    try:
        return await asyncio.wait_for(handle.pid.remote(), 5) != old_pid and \
            (await handle.health.remote())["state"] == "ok"
    except (ray.exceptions.RayActorError, TimeoutError):
        return False


async def _placeable(loom, worker: str) -> bool:
    await loom.pool.refresh_loads()
    return worker in loom.placer.live()


async def test_the_coordinator_killed_mid_jobs_is_rebuilt_and_budgets_hold(service, loom):
    reference = [r.result["text"] for r in await run_all(service, QUESTIONS[:4])]
    coordinator = loom.coordinator
    pid = await coordinator.pid.remote()
    jobs = asyncio.gather(*(service.run(JobRequest(prompt=q.prompt, fork_policy=EAGER)) for q in QUESTIONS[:4]))
    await until(lambda: _threads_in_flight(coordinator), 120, "threads in flight")
    os.kill(pid, signal.SIGKILL)
    records = await jobs
    assert [r.status for r in records] == ["done"] * 4, [r.error for r in records]
    assert [r.result["text"] for r in records] == reference
    assert all(r.usage["tokens"] == r.result["total_tokens"] for r in records), \
        [(r.usage["tokens"], r.result["total_tokens"], r.usage["per_thread"]) for r in records]  # charged once
    assert await coordinator.pid.remote() != pid
    await loom.runner.drain()  # the jobs' closes are posted, not waited for
    view = await coordinator.cluster.remote()
    assert view["jobs"] == 0 and view["threads_in_flight"] == 0  # the rebuilt ledger closed out clean


async def _threads_in_flight(coordinator) -> bool:
    return (await coordinator.cluster.remote())["threads_in_flight"] > 0


def test_a_redis_outage_refuses_new_work_with_503_and_loses_nothing(serve_url, loom_config, redis_server):  # noqa: F811
    from ray import serve

    from cluster.app import app_builder

    serve.run(app_builder({**loom_config.to_dict(), "redis_url": redis_server.url}), name="loom-blip",
              route_prefix="/blip")
    try:
        with httpx.Client(base_url=serve_url + "/blip", timeout=60) as client:
            ids = [client.post("/v1/jobs", json={"prompt": q.prompt}).json()["id"] for q in QUESTIONS[:4]]
            redis_server.stop(hard=True)
            refused = client.post("/v1/jobs", json={"prompt": QUESTIONS[4].prompt})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
            assert "job store" in refused.json()["error"]["message"]
            assert client.get(f"/v1/jobs/{ids[0]}").status_code == 503
            time.sleep(4)
            redis_server.start()  # same port and directory: the AOF brings back what was written
            final = {i: final_record(client, i) for i in ids}
        assert {rec["status"] for rec in final.values()} == {"done"}, \
            {i: (rec["status"], rec.get("error"), rec.get("notes")) for i, rec in final.items()}
    finally:
        serve.delete("loom-blip")


def test_loom_serve_stops_cleanly_on_sigterm(redis_server, tmp_path):  # noqa: F811
    """A real `loom serve` (its own Ray cluster and engine, Redis for its records), SIGTERM with
    jobs running: it exits within a bound, no process of it is left, and every job it had taken
    is written back (done, or failed with the reason)."""
    import json
    import subprocess
    import sys

    import yaml

    from orchestrator.service.redis_store import RedisJobStore

    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "redis_url": redis_server.url,
                                      "worker_prefix": "loom-stop"}))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        with httpx.Client(base_url=url, timeout=30) as client:
            ids = [client.post("/v1/jobs", json={"prompt": q.prompt}).json()["id"] for q in QUESTIONS]
        # its engine core runs in its own session, a child of the worker actor (processes.engine_cores)
        try:
            wait_until(lambda: _engine_core_of(proc.pid), timeout=30, every=0.5)
        except AssertionError:
            raise AssertionError(f"no engine core: {proc.poll()=}, session: {_session_processes(proc.pid)}")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(timeout=120)
        stop_s = time.monotonic() - t0
        try:
            wait_until(lambda: _session_processes(proc.pid) == [], timeout=30, every=0.5)
        except AssertionError:
            raise AssertionError(f"processes of `loom serve` outlived it: {_session_processes(proc.pid)}") from None
        print(f"\nloom serve stopped in {stop_s:.1f} s")
        records = asyncio.run(_records(RedisJobStore(redis_server.url), ids))
        for rec in records:
            assert rec.status == "done" or (rec.status == "failed" and "stopped" in rec.error), json.dumps(rec.error)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_healthy(url: str, proc, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"loom serve exited: {proc.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("loom serve did not become healthy")


def _engine_core_of(sid: int) -> bool:
    worker = session_process(sid, "ray::WorkerActor")
    try:
        return worker is not None and bool(engine_cores(worker.pid))
    except psutil.Error:  # the worker ended between the two looks
        return False


def _session_processes(sid: int) -> list:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid} {cmd[:60]}")
        except (ProcessLookupError, psutil.Error):
            continue
    return found


async def _records(store, ids):
    try:
        return [await store.get(i) for i in ids]
    finally:
        await store.aclose()
