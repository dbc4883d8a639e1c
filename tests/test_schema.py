"""The door: every class of bad input gets a RequestError naming the problem, every good one a
JobRequest. Plain Python (orchestrator/service/schema.py), no server; the same bodies against the real
app are in test_front_door_integration.py."""
from __future__ import annotations

import json

import pytest

from orchestrator.driver.records import JobRequest, RequestError
from orchestrator.protocol.fork import ForkPolicy
from orchestrator.service.schema import chat_request, decode_json, job_request

GOOD = {"prompt": "Q: 1*2+3*4\n"}
CHAT = {"messages": [{"role": "user", "content": "1*2+3*4"}]}


@pytest.mark.parametrize("body,msg", [
    ({}, "exactly one"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "exactly one"),
    ({"prompt": "  "}, "'prompt': Value error, must not be blank"),
    ({"prompt": "x", "format": "tot"}, "'format'"),
    ({"prompt": "x", "format": ["threadweaver"]}, "'format'"),
    ({"prompt": "x", "format": {"a": 1}}, "'format'"),
    ({"prompt": "x", "mode": "fast"}, "'mode'"),
    ({"prompt": "x", "temperature": 9}, "'temperature'"),
    ({"prompt": "x", "temperature": True}, "'temperature'"),
    ({"prompt": "x", "seed": "abc"}, "'seed'"),
    ({"prompt": "x", "seed": {"a": 1}}, "'seed'"),
    ({"prompt": "x", "seed": 10**30}, "'seed'"),
    ({"prompt": "x", "seed": -1}, "'seed'"),
    ({"prompt": "x", "seed": 1.5}, "'seed'"),
    ({"prompt": "x", "top_p": 0}, "'top_p'"),
    ({"prompt": "x", "stop": ["a"] * 5}, "'stop'"),
    ({"prompt": "x", "stop": [""]}, "'stop.0'"),
    ({"prompt": "x", "budget": "big"}, "'budget'"),
    ({"prompt": "x", "budget": {"max_width": -1}}, "budget.max_width"),
    ({"prompt": "x", "budget": {"max_width": 0}}, "budget.max_width"),
    ({"prompt": "x", "budget": {"max_width": True}}, "'budget.max_width"),
    ({"prompt": "x", "budget": {"max_width": "4"}}, "'budget.max_width"),
    ({"prompt": "x", "budget": {"max_width": 2.5}}, "whole number"),
    ({"prompt": "x", "budget": {"max_total_tokens": 1e300}}, "budget.max_total_tokens"),
    ({"prompt": "x", "budget": {"max_total_tokens": 10**30}}, "budget.max_total_tokens"),
    ({"prompt": "x", "budget": {"max_thread_tokens": 1e20}}, "budget.max_thread_tokens"),
    ({"prompt": "x", "budget": {"deadline_s": float("nan")}}, "budget.deadline_s"),
    ({"prompt": "x", "budget": {"deadline_s": float("inf")}}, "budget.deadline_s"),
    ({"prompt": "x", "budget": {"colour": 1}}, "unknown budget field"),
    ({"prompt": "x", "colour": 1}, "unknown or unsupported field(s): colour"),
    ({"prompt": "x", "fork_policy": "sometimes"}, "'fork_policy'"),
    ({"prompt": "x", "fork_policy": 1}, "'fork_policy'"),
    ({"prompt": "x", "latency_target_s": 0}, "'latency_target_s'"),
    ({"prompt": "x", "latency_target_s": -2.5}, "'latency_target_s'"),
    ({"prompt": "x", "latency_target_s": "2"}, "'latency_target_s'"),
    ({"prompt": "x", "latency_target_s": 1e9}, "'latency_target_s'"),
    ({"prompt": "\ud800"}, "lone surrogate"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "'messages.0.role'"),
    ({"messages": [{"role": "user", "content": 3}]}, "'messages.0.content'"),
    ({"messages": []}, "'messages'"),
    ([], "JSON object"),
    ("Q: 1+2", "JSON object"),
])
def test_bad_job_bodies_are_named(body, msg):
    with pytest.raises(RequestError) as e:
        job_request(body)
    assert msg in str(e.value)


@pytest.mark.parametrize("extra,msg", [
    ({"stream": "no"}, "'stream'"),
    ({"stream": 1}, "'stream'"),
    ({"n": 2}, "'n'"),
    ({"loom": "x"}, "'loom'"),
    ({"loom": {"colour": 1}}, "loom.colour"),
    ({"loom": {"budget": {"max_width": "x"}}}, "'loom.budget.max_width"),
    ({"loom": {"fork_policy": "wide"}}, "'loom.fork_policy'"),
    ({"loom": {"latency_target_s": True}}, "'loom.latency_target_s'"),
    ({"presence_penalty": 1, "logprobs": True}, "unsupported field(s): logprobs, presence_penalty"),
    ({"max_tokens": 0}, "'max_tokens'"),
    ({"max_tokens": 10, "max_completion_tokens": 20}, "not both"),
    ({"max_tokens": 10, "max_completion_tokens": 10}, "not both"),
    ({"stream_options": {"include_usage": "yes"}}, "'stream_options.include_usage'"),
    ({"model": ["a"]}, "'model'"),
])
def test_bad_chat_bodies_are_named(extra, msg):
    with pytest.raises(RequestError) as e:
        chat_request({**CHAT, **extra})
    assert msg in str(e.value)


def test_good_job_body_keeps_every_field():
    req = job_request({**GOOD, "budget": {"max_width": 2.0, "deadline_s": 5}, "seed": 7, "stop": ["A:"],
                       "temperature": 1, "top_p": 0.5, "fork_policy": "never", "latency_target_s": 2})
    assert req == JobRequest(prompt=GOOD["prompt"], budget={"max_width": 2.0, "deadline_s": 5}, seed=7,
                             stop=["A:"], temperature=1.0, top_p=0.5, fork_policy=ForkPolicy.NEVER,
                             latency_target_s=2.0)
    assert job_request(GOOD).fork_policy is None  # the server's: the job runner fills it in
    assert job_request(GOOD).format is None  # the served model's: the job runner fills it in
    assert job_request({**GOOD, "format": "apr"}).format == "apr"


def test_chat_maps_openai_fields_onto_the_job():
    chat, req = chat_request({**CHAT, "max_completion_tokens": 300, "stop": "A:", "top_p": 0.9, "seed": 3,
                              "stream": True, "stream_options": {"include_usage": True}, "user": "u1",
                              "loom": {"mode": "sequential", "budget": {"max_width": 2}, "fork_policy": "eager",
                                       "latency_target_s": 1.5}})
    assert chat.stream and chat.stream_options.include_usage
    assert req == JobRequest(messages=CHAT["messages"], format=None, mode="sequential",
                             budget={"max_width": 2, "max_total_tokens": 300}, top_p=0.9, seed=3, stop=["A:"],
                             fork_policy=ForkPolicy.EAGER, latency_target_s=1.5)


@pytest.mark.parametrize("raw,msg", [
    (b"not json", "not valid JSON"),
    (b'{"prompt": Infinity}', "Infinity is not a JSON number"),
    (b'{"seed": NaN}', "NaN is not a JSON number"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_bad_json_is_named(raw, msg):
    with pytest.raises(RequestError, match=msg):
        decode_json(raw)


def test_good_json_decodes():
    assert decode_json(json.dumps(GOOD).encode()) == GOOD
