"""Killing and restarting the Loom Serve app over a real Redis store: every finished job stays
readable, and every job that was in flight comes back resumed or failed with a reason."""
from __future__ import annotations

import time

import httpx
import pytest
from redis_server import redis_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
APP, PREFIX = "loom-redis", "/redis"


def deploy(loom_config, url: str) -> None:
    from ray import serve

    from cluster.app import app_builder

    serve.run(app_builder({**loom_config.to_dict(), "redis_url": url}), name=APP, route_prefix=PREFIX)


def wait_final(client, job_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = client.get(f"{PREFIX}/v1/jobs/{job_id}").json()
        if rec["status"] not in ("queued", "running"):
            return rec
        time.sleep(0.3)
    raise AssertionError(f"{job_id} still {rec['status']}")


def test_restart_keeps_finished_jobs_and_accounts_for_in_flight_ones(serve_url, loom_config, redis_server):  # noqa: F811
    from ray import serve

    deploy(loom_config, redis_server.url)
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        done_id = client.post(f"{PREFIX}/v1/jobs", json={"prompt": "Q: 12*3+45*6\n"}).json()["id"]
        first = wait_final(client, done_id)
        assert first["status"] == "done"
        in_flight = [client.post(f"{PREFIX}/v1/jobs", json={"prompt": f"Q: 905*9+14*3+220*{d}+3\n"}).json()["id"]
                     for d in range(2, 6)]
        serve.delete(APP)  # the controller goes away with jobs running
        redis_server.restart()  # and so does Redis (AOF keeps what was written)
        deploy(loom_config, redis_server.url)
        assert wait_final(client, done_id) == first
        for job_id in in_flight:
            rec = wait_final(client, job_id)
            assert rec["status"] in ("done", "failed"), rec
            if rec["status"] == "failed":
                assert "controller" in rec["error"]
        listed = {j["id"] for j in client.get(f"{PREFIX}/v1/jobs").json()["data"]}
        assert {done_id, *in_flight} <= listed
    serve.delete(APP)
