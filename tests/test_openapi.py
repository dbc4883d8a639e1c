"""/openapi.json documents every route's body, responses and errors, and its request schemas say
exactly what the door (service/schema.py) accepts: each body below is valid under the published
schema if and only if the validator takes it. The same spec against a running server, fuzzed by
schemathesis, is in test_openapi_integration.py."""
from __future__ import annotations

import jsonschema
import pytest

from orchestrator.driver.records import RequestError
from orchestrator.service.api import build_app
from orchestrator.service.schema import chat_request, job_request

MODEL = "loom-arith"
SPEC = build_app(None, MODEL).openapi()
MSG = [{"role": "user", "content": "1*2+3*4"}]


def valid(schema_name: str, body: object) -> bool:
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    return jsonschema.Draft202012Validator(root).is_valid(body)


def accepted(door, body: object) -> bool:
    try:
        door(body)
    except RequestError:
        return False
    return True


JOB_BODIES = [
    {"prompt": "x"}, {"messages": MSG}, {}, {"prompt": "x", "messages": MSG}, {"prompt": None, "messages": MSG},
    {"prompt": "x", "messages": None}, {"prompt": None}, {"prompt": " \t\n"}, {"prompt": "\x1c"}, {"prompt": ""},
    {"prompt": "x", "format": "multiverse"}, {"prompt": "x", "format": "tot"}, {"prompt": "x", "mode": "fast"},
    {"prompt": "x", "seed": 7}, {"prompt": "x", "seed": 7.0}, {"prompt": "x", "seed": 7.5}, {"prompt": "x", "seed": -1},
    {"prompt": "x", "seed": True}, {"prompt": "x", "seed": "7"}, {"prompt": "x", "seed": 2**63},
    {"prompt": "x", "temperature": 2}, {"prompt": "x", "temperature": 2.01}, {"prompt": "x", "top_p": 0},
    {"prompt": "x", "stop": ["a"] * 4}, {"prompt": "x", "stop": ["a"] * 5}, {"prompt": "x", "stop": [""]},
    {"prompt": "x", "stop": ["a" * 64]}, {"prompt": "x", "stop": ["a" * 65]}, {"prompt": "x", "colour": 1},
    {"prompt": "x", "budget": {"max_width": 2}}, {"prompt": "x", "budget": {"max_width": 2.0}},
    {"prompt": "x", "budget": {"max_width": 2.5}}, {"prompt": "x", "budget": {"max_width": 0}},
    {"prompt": "x", "budget": {"max_width": 1025}}, {"prompt": "x", "budget": {"max_width": True}},
    {"prompt": "x", "budget": {"deadline_s": 0.001}}, {"prompt": "x", "budget": {"deadline_s": 0.0009}},
    {"prompt": "x", "budget": {"colour": 1}}, {"prompt": "x", "budget": None}, {"prompt": "x", "budget": []},
    {"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": "", "name": None}]}, {"messages": [{"role": "user", "content": 3}]},
    [], "x", None,
]

CHAT_BODIES = [
    {"messages": MSG}, {"messages": MSG, "model": MODEL}, {"messages": MSG, "model": None},
    {"messages": MSG, "max_tokens": 5}, {"messages": MSG, "max_tokens": 5.0}, {"messages": MSG, "max_tokens": 0},
    {"messages": MSG, "max_tokens": 5, "max_completion_tokens": 5},
    {"messages": MSG, "max_tokens": None, "max_completion_tokens": 5},
    {"messages": MSG, "n": 1}, {"messages": MSG, "n": 1.0}, {"messages": MSG, "n": 2},
    {"messages": MSG, "stop": "A:"}, {"messages": MSG, "stop": ["A:", "B"]}, {"messages": MSG, "stop": ""},
    {"messages": MSG, "stop": ["a"] * 4}, {"messages": MSG, "stop": ["a"] * 5},
    {"messages": MSG, "stream": True, "stream_options": {"include_usage": True}}, {"messages": MSG, "stream": 1},
    {"messages": MSG, "loom": {"mode": "sequential", "budget": {"max_depth": 2}}},
    {"messages": MSG, "loom": {"budget": {"max_depth": 33}}}, {"messages": MSG, "logprobs": True}, {"messages": []},
]


@pytest.mark.parametrize("body", JOB_BODIES, ids=repr)
def test_job_schema_says_what_the_door_takes(body):
    assert valid("JobBody", body) == accepted(job_request, body)


@pytest.mark.parametrize("body", CHAT_BODIES, ids=repr)
def test_chat_schema_says_what_the_door_takes(body):
    assert valid("ChatBody", body) == accepted(chat_request, body)


def test_another_model_is_outside_the_schema_and_answers_404():
    """The spec names the one served model; the route answers 404 for another (test_front_door)."""
    assert not valid("ChatBody", {"messages": MSG, "model": "gpt-4"})
    assert accepted(chat_request, {"messages": MSG, "model": "gpt-4"})


def test_every_route_documents_its_body_responses_and_errors():
    ops = {(path, method): op for path, item in SPEC["paths"].items() for method, op in item.items()}
    assert set(ops) == {("/v1/jobs", "post"), ("/v1/jobs", "get"), ("/v1/jobs/{job_id}", "get"),
                        ("/v1/chat/completions", "post"), ("/v1/models", "get"), ("/healthz", "get")}
    for key in (("/v1/jobs", "post"), ("/v1/chat/completions", "post")):
        assert ops[key]["requestBody"]["required"]
    for (path, method), op in ops.items():
        assert "422" not in op["responses"], (path, method)  # Loom answers 400, never FastAPI's 422
        for code, response in op["responses"].items():
            assert response["content"], (path, method, code)
    errors = {(p, m): sorted(c for c in op["responses"] if c >= "400") for (p, m), op in ops.items()}
    assert errors[("/v1/jobs", "post")] == ["400", "413", "503"]
    assert errors[("/v1/jobs/{job_id}", "get")] == ["404", "503"]
    assert errors[("/v1/chat/completions", "post")] == ["400", "404", "413", "500", "503"]
    limit = ops[("/v1/jobs", "get")]["parameters"][0]["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
