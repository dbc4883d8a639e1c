"""Real forked jobs' traces in a real trace server: every process of the Serve app (the ingress
replica, two workers) exports its spans over OTLP to Arize Phoenix (conftest's ``trace_server``),
and the test reads them back through Phoenix's own REST API. A ThreadWeaver job on the session's
app and a nested Multiverse job on a second app (the Multiverse model, two workers): one trace per
job, no orphan span, the thread spans under their block, and each engine request's span says
what the job's record says of it (worker, tokens, cached tokens, placement reason, KV origin)."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import TRACE_PROJECT
from polling import final_record

from cluster.config import load

pytestmark = pytest.mark.integration
MODEL = "loom-arith"
MV_CONFIG = Path(__file__).resolve().parent.parent / "cluster" / "multiverse.yaml"


@pytest.fixture(scope="module")
def client(serve_url, trace_server):
    trace_server.wait_ready()
    with httpx.Client(base_url=serve_url, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def mv_prefix(client, ray_cluster):
    """A second Serve app at /mv: the shipped Multiverse model on two workers of its own."""
    from ray import serve

    from cluster import runtime
    from cluster.app import app_builder

    cfg = load(MV_CONFIG, {"worker_prefix": "loom-mv-trace", "num_workers": 2})
    serve.run(app_builder(cfg.to_dict()), name="loom-mv", route_prefix="/mv")
    yield "/mv"
    serve.delete("loom-mv")
    runtime.shutdown_actors(cfg, coordinator=False)  # the session's coordinator stays


def run_job(client: httpx.Client, prefix: str, body: dict) -> dict:
    r = client.post(f"{prefix}/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    rec = final_record(client, r.json()["id"], prefix=prefix)
    assert rec["status"] == "done", rec
    return rec


def requests_of(rec: dict) -> dict[int, dict]:
    """The record's engine requests: node id -> node, for every node that was placed."""
    return {n["id"]: n for n in rec["dag"]["nodes"] if n["placement"]}


def trace_of(server, rec: dict, timeout: float = 90.0) -> list[dict]:
    """The job's whole trace from the server: polled until its root, one request span and one
    worker span per engine request are all there (exporters batch; the server files asynchronously)."""
    want = len(requests_of(rec))
    deadline, spans = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        if (root := server.job_root(TRACE_PROJECT, rec["id"])) is not None:
            spans = server.spans(TRACE_PROJECT, trace_id=root["context"]["trace_id"])
            names = Counter(s["name"] for s in spans)
            if names[f"chat {model_of(rec)}"] >= want and names["loom.engine.generate"] >= want:
                return spans
        time.sleep(0.5)
    raise AssertionError(f"trace of {rec['id']} incomplete after {timeout} s: {Counter(s['name'] for s in spans)}")


def model_of(rec: dict) -> str:
    return "loom-arith-mv" if rec["request"]["format"] == "multiverse" else MODEL


def check_trace(spans: list[dict], rec: dict) -> None:
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["name"] == "loom.job" and attr(root, "loom.job.id") == rec["id"]
    assert root["span_kind"] == "CHAIN"  # Phoenix reads openinference.span.kind into span_kind
    orphans = [s["name"] for s in spans if s["parent_id"] is not None and s["parent_id"] not in by_id]
    assert not orphans, orphans
    nodes = {n["id"]: n for n in rec["dag"]["nodes"]}
    threads = [s for s in spans if s["name"] == "loom.thread"]
    assert len(threads) == sum(n["kind"] == "thread" for n in nodes.values()) >= 2
    for t in threads:
        assert by_id[t["parent_id"]]["name"] == "loom.block"
        assert nodes[attr(t, "loom.node")]["kind"] == "thread"
    chats = {attr(s, "loom.node"): s for s in spans if s["name"] == f"chat {model_of(rec)}"}
    for node_id, node in requests_of(rec).items():
        span, placement = chats[node_id], node["placement"]
        assert span["span_kind"] == "LLM"
        assert attr(span, "gen_ai.operation.name") == "chat" and attr(span, "gen_ai.request.model") == model_of(rec)
        assert attr(span, "loom.worker") == node["worker"]
        assert attr(span, "gen_ai.usage.output_tokens") == node["tokens"]
        assert attr(span, "gen_ai.usage.input_tokens") > attr(span, "gen_ai.usage.cache_read.input_tokens")
        assert attr(span, "loom.prefix.cached_tokens") == node["cached_tokens"]
        assert attr(span, "loom.placement.reason") == placement["reason"]
        assert attr(span, "loom.prefix.source") == placement["prefix"]["source"]
        if node["kind"] == "thread":  # under its thread span, through any segments
            assert ancestor_named(span, by_id, "loom.thread")
        served = [s for s in spans if s["name"] == "loom.engine.generate"
                  and s["parent_id"] == span["context"]["span_id"]]
        assert [attr(s, "loom.worker") for s in served] == [node["worker"]]


def attr(span: dict, key: str):
    return span["attributes"].get(key)


def ancestor_named(span: dict, by_id: dict, name: str) -> bool:
    while span["parent_id"] is not None:
        span = by_id[span["parent_id"]]
        if span["name"] == name:
            return True
    return False


def test_threadweaver_job_is_one_trace_in_the_trace_server(client, trace_server):
    rec = run_job(client, "", {"prompt": "Q: 23*4+56*7+8*9\n"})
    assert sum(n["kind"] == "thread" for n in rec["dag"]["nodes"]) == 3
    check_trace(trace_of(trace_server, rec), rec)


def test_nested_multiverse_job_is_one_trace_in_the_trace_server(client, trace_server, mv_prefix):
    rec = run_job(client, mv_prefix, {"prompt": "Q: 345*67+89+12*3\n", "format": "multiverse"})
    assert max(n["depth"] for n in rec["dag"]["nodes"] if n["kind"] == "thread") == 2  # a block inside a path
    spans = trace_of(trace_server, rec)
    check_trace(spans, rec)
    blocks = [s for s in spans if s["name"] == "loom.block"]
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert any(ancestor_named(b, by_id, "loom.thread") for b in blocks)  # the inner block, under its path
