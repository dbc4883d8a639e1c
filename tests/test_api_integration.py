"""The HTTP surface on a real Ray Serve app over the session's engine."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import psutil
import pytest
from polling import final_record, wait_until

ANSWER = re.compile(r"^A: \d+$")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=120) as c:
        yield c


def test_the_app_is_reached_through_haproxy(client, serve_url):
    """The session starts Ray as `loom serve` does (`ingress: haproxy`): HAProxy, not Serve's
    Python proxy, listens on the app's port, and answers there."""
    port = int(serve_url.rsplit(":", 1)[1])
    listening = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert {psutil.Process(pid).name() for pid in listening} == {"haproxy"}
    assert client.get("/v1/models").status_code == 200


def test_submit_then_read_job(client):
    r = client.post("/v1/jobs", json={"prompt": "Q: 12*3+45*6\n"})
    assert r.status_code == 202
    job_id = r.json()["id"]
    rec = final_record(client, job_id)
    assert rec["status"] == "done" and ANSWER.match(rec["result"]["answer"])
    assert len([n for n in rec["dag"]["nodes"] if n["kind"] == "thread"]) == 2
    assert job_id in [j["id"] for j in client.get("/v1/jobs").json()["data"]]


def test_chat_completion_openai_shape(client):
    r = client.post("/v1/chat/completions", json={"model": "loom-arith",
                                                  "messages": [{"role": "user", "content": "7*8+6*5"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    msg = body["choices"][0]["message"]
    assert ANSWER.match(msg["content"]) and "<Parallel>" in msg["reasoning"]
    job = client.get(f"/v1/jobs/{body['loom']['job_id']}").json()
    assert job["result"]["text"] == msg["reasoning"] + msg["content"]
    assert body["usage"]["completion_tokens"] > 0 and body["object"] == "chat.completion"


def test_chat_streaming_sse_ends_with_done(client):
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "7*8+6*5"}], "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning", "") for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "<Thread>" in reasoning and ANSWER.match(content)
    job_id = chunks[0]["id"].removeprefix("chatcmpl-")
    text = client.get(f"/v1/jobs/{job_id}").json()["result"]["text"]
    assert reasoning + content == text and reasoning.rstrip().endswith("</think>")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_models_and_health(client):
    assert client.get("/v1/models").json()["data"][0]["id"] == "loom-arith"
    r = client.get("/healthz")
    health = r.json()
    assert r.status_code == 200 and health["status"] == "ok" and health["model"] == "loom-arith"
    assert sorted(health["workers"]) == [f"loom-worker-{i}" for i in range(2)] and health["replica"]
    assert all(w["state"] == "ok" and w["active"] == 0 for w in health["workers"].values()), health
    # this replica follows each engine's KV events (the engines published some at start-up)
    wait_until(lambda: all(w["kv_events_applied"] >= 0 for w in client.get("/healthz").json()["workers"].values()),
               timeout=30)
    assert health["coordinator"]["state"] == "ok" and health["coordinator"]["threads_in_flight"] == 0


@pytest.mark.parametrize("path,body,status,msg", [
    ("/v1/jobs", b"not json", 400, "not valid JSON"),
    ("/v1/jobs", {"prompt": ""}, 400, "must not be blank"),
    ("/v1/jobs", {"prompt": "x", "budget": {"max_width": 0}}, 400, "max_width"),
    ("/v1/jobs", {"prompt": "x", "format": "tot"}, 400, "'format'"),
    ("/v1/chat/completions", {"messages": []}, 400, "'messages'"),
    ("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "gpt-9"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "'n'"),
])
def test_bad_input_gets_4xx_json(client, path, body, status, msg):
    r = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    assert r.status_code == status
    assert msg in r.json()["error"]["message"]


def test_unknown_job_is_404_json(client):
    r = client.get("/v1/jobs/job-nope")
    assert r.status_code == 404 and "job-nope" in r.json()["error"]["message"]


def test_cli_submit_against_the_running_app(serve_url):
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "Q: 99*9+1", "--url", serve_url],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ANSWER.match(out.stdout.strip())


def test_cli_names_bad_input():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "x", "--budget", "max_width"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "key=value" in out.stderr
