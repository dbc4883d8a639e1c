"""Hostile input against the real Serve app: every class of bad request gets a 4xx JSON error
naming the problem, none harms another request, and generated bodies (hypothesis) never get a
5xx. After all of it a good job still gets its answer and /healthz is ok."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polling import final_record

from models.task import parse_question

pytestmark = pytest.mark.integration
GOOD_JOB = {"prompt": "Q: 1*2+3*4\n", "budget": {"max_total_tokens": 200}}
GOOD_CHAT = {"messages": [{"role": "user", "content": "1*2+3*4"}], "max_tokens": 200}
ROUTES = {"/v1/jobs": GOOD_JOB, "/v1/chat/completions": GOOD_CHAT}


@pytest.fixture(scope="module")
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=300) as c:
        yield c


def assert_json_error(r: httpx.Response, status: int | None = None, says: str = "") -> None:
    assert 400 <= r.status_code < 500 if status is None else r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str) and body["error"]["type"]
    assert says in body["error"]["message"], body


def good_job_still_answers(client: httpx.Client) -> None:
    r = client.post("/v1/jobs", json=GOOD_JOB)
    assert r.status_code == 202, r.text
    rec = final_record(client, r.json()["id"])
    assert rec["status"] == "done" and rec["result"]["answer"] == f"A: {parse_question('1*2+3*4').answer}"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("field,value,says", [
    ("seed", "abc", "'seed'"), ("seed", {"a": 1}, "'seed'"), ("seed", 10**30, "'seed'"),
    ("temperature", True, "'temperature'"), ("top_p", 7, "'top_p'"), ("stop", [1], "'stop"),
    ("colour", 1, "colour"),
])
def test_bad_field_types_are_named(client, route, field, value, says):
    assert_json_error(client.post(route, json={**ROUTES[route], field: value}), 400, says)


@pytest.mark.parametrize("body,says", [
    ({"prompt": "x", "format": ["apr"]}, "'format'"),
    ({"prompt": "x", "format": {"a": 1}}, "'format'"),
    ({"prompt": "x", "budget": "lots"}, "'budget'"),
    ({"prompt": "x", "budget": {"max_total_tokens": 1e300}}, "budget.max_total_tokens"),
    ({"prompt": "x", "budget": {"max_thread_tokens": 1e20}}, "budget.max_thread_tokens"),
    ({"prompt": "x", "budget": {"max_width": 2**70}}, "budget.max_width"),
])
def test_out_of_range_budgets_are_refused(client, body, says):
    assert_json_error(client.post("/v1/jobs", json=body), 400, says)


@pytest.mark.parametrize("raw,says", [
    (b'{"prompt": "x", "budget": {"deadline_s": NaN}}', "NaN"),
    (b'{"prompt": "x", "seed": Infinity}', "Infinity"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"\xff\xfe", "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_unreadable_bodies_are_400_json(client, raw, says):
    for route in ROUTES:
        assert_json_error(client.post(route, content=raw, headers={"content-type": "application/json"}), 400, says)


@pytest.mark.parametrize("route,raw", [
    ("/v1/jobs", b'{"prompt": "Q: 1*2\\ud800"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}'),
])
def test_lone_surrogates_are_refused(client, route, raw):
    assert_json_error(client.post(route, content=raw, headers={"content-type": "application/json"}), 400, "surrogate")


def test_chat_refuses_what_it_cannot_honour_and_names_it(client):
    r = client.post("/v1/chat/completions", json={**GOOD_CHAT, "logprobs": True, "tools": []})
    assert_json_error(r, 400, "unsupported field(s): logprobs, tools")
    assert_json_error(client.post("/v1/chat/completions", json={**GOOD_CHAT, "stream": "no"}), 400, "'stream'")
    assert_json_error(client.post("/v1/chat/completions", json={**GOOD_CHAT, "loom": {"widht": 2}}), 400,
                      "loom.widht")


def test_chat_honours_openai_sampling_fields(client):
    body = {"messages": GOOD_CHAT["messages"], "top_p": 0.5, "seed": 3, "max_completion_tokens": 300,
            "stop": ["<Parallel>"]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "<Parallel>" not in body["choices"][0]["message"]["reasoning"]  # stopped at the user's stop
    job = client.get(f"/v1/jobs/{body['loom']['job_id']}").json()
    assert job["request"]["stop"] == ["<Parallel>"] and job["request"]["top_p"] == 0.5
    assert job["usage"]["budget"]["max_total_tokens"] == 300


def test_prompt_longer_than_the_context_is_refused_by_name(client, loom_config):
    long = "Q: " + "1+" * loom_config.engine.max_model_len + "1\n"
    assert_json_error(client.post("/v1/jobs", json={"prompt": long}), 400, "max_model_len")
    chat = {"messages": [{"role": "user", "content": long}]}
    assert_json_error(client.post("/v1/chat/completions", json=chat), 400, f"is {loom_config.engine.max_model_len}")


def test_usage_counts_the_prompt(client):
    body = client.post("/v1/chat/completions", json=GOOD_CHAT).json()
    assert body["usage"]["prompt_tokens"] == 1 + len("Q: 1*2+3*4\n")  # BOS, then a token per character


def test_oversized_bodies_are_413_before_they_are_read(client, loom_config):
    big = json.dumps({"prompt": "Q: " + "9" * loom_config.max_request_bytes}).encode()
    assert_json_error(client.post("/v1/jobs", content=big), 413, "max_request_bytes")

    def chunks():  # no Content-Length: counted while read
        yield b'{"prompt": "'
        for _ in range(loom_config.max_request_bytes // 65536 + 2):
            yield b"9" * 65536
        yield b'"}'
    assert_json_error(client.post("/v1/chat/completions", content=chunks()), 413, "max_request_bytes")


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/nowhere", 404), ("DELETE", "/v1/jobs", 405), ("GET", "/v1/jobs?limit=abc", 400),
    ("GET", "/v1/jobs?limit=0", 400), ("GET", "/v1/jobs/job-nope", 404), ("PUT", "/healthz", 405),
])
def test_routing_errors_are_json(client, method, path, status):
    assert_json_error(client.request(method, path), status)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = ["prompt", "messages", "format", "mode", "budget", "temperature", "top_p", "seed", "stop", "model",
          "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "user", "loom", "extra"]


@st.composite
def mutated(draw):
    """A good body with one to three fields replaced by arbitrary JSON, or arbitrary JSON alone."""
    route = draw(st.sampled_from(list(ROUTES)))
    if draw(st.integers(0, 4)) == 0:
        return route, draw(JSON)
    body = dict(ROUTES[route])
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        body[name] = draw(JSON)
    return route, body


def test_generated_bodies_never_get_a_5xx_and_nothing_accepted_hangs(client):
    accepted: list[str] = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated())
    def probe(case):
        route, body = case
        r = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code < 500, (route, body, r.text)
        if r.status_code >= 400:
            assert_json_error(r)
        elif route == "/v1/jobs":
            accepted.append(r.json()["id"])
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]")
        else:
            accepted.append(r.json()["loom"]["job_id"])

    probe()
    for job_id in accepted:
        rec = final_record(client, job_id)
        assert rec["status"] in ("done", "cancelled"), rec
    good_job_still_answers(client)


def test_an_unsupported_method_names_every_method_of_the_path(client):
    for method in ("DELETE", "OPTIONS", "PUT"):
        r = client.request(method, "/v1/jobs")
        assert_json_error(r, 405)
        assert r.headers["allow"] == "GET, POST"


def test_schemathesis_finds_nothing_against_the_published_spec(client, serve_url, tmp_path):
    """A new user's first check of the API: schemathesis generates requests from /openapi.json
    (positive and negative, every check) against the running app. It must find no failure, every
    job it started must end, and the app must still answer right afterwards."""
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run([str(cli), "run", f"{serve_url}/openapi.json", "--checks", "all", "--max-examples", "25",
                          "--seed", "20261205", "--generation-database", "none", "--workers", "1",
                          "--request-timeout", "300", "--no-color"],
                         check=False, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0 and "No issues found" in run.stdout, run.stdout[-6000:] + run.stderr[-2000:]
    for job in client.get("/v1/jobs", params={"limit": 1000}).json()["data"]:
        assert final_record(client, job["id"])["status"] in ("done", "cancelled")
    good_job_still_answers(client)
