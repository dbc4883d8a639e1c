"""Killing and restarting the Loom Serve app over a real Redis store: every finished job stays
readable, and every job that was in flight comes back resumed or failed with a reason."""
from __future__ import annotations

import httpx
import pytest
from polling import final_record
from redis_server import redis_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
APP, PREFIX = "loom-redis", "/redis"


def deploy(loom_config, url: str) -> None:
    from ray import serve

    from cluster.app import app_builder

    serve.run(app_builder({**loom_config.to_dict(), "redis_url": url}), name=APP, route_prefix=PREFIX)


def test_restart_keeps_finished_jobs_and_accounts_for_in_flight_ones(serve_url, loom_config, redis_server):  # noqa: F811
    from ray import serve

    deploy(loom_config, redis_server.url)
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        done_id = client.post(f"{PREFIX}/v1/jobs", json={"prompt": "Q: 12*3+45*6\n"}).json()["id"]
        first = final_record(client, done_id, prefix=PREFIX)
        assert first["status"] == "done"
        in_flight = [client.post(f"{PREFIX}/v1/jobs", json={"prompt": f"Q: 905*9+14*3+220*{d}+3\n"}).json()["id"]
                     for d in range(2, 6)]
        serve.delete(APP)  # the controller goes away with jobs running
        redis_server.restart()  # and so does Redis (AOF keeps what was written)
        deploy(loom_config, redis_server.url)
        assert final_record(client, done_id, prefix=PREFIX) == first
        for job_id in in_flight:
            rec = final_record(client, job_id, prefix=PREFIX)
            assert rec["status"] in ("done", "failed"), rec
            if rec["status"] == "failed":
                assert "controller" in rec["error"]
        listed = {j["id"] for j in client.get(f"{PREFIX}/v1/jobs").json()["data"]}
        assert {done_id, *in_flight} <= listed
    serve.delete(APP)
