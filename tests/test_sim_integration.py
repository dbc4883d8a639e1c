"""Loom's real control plane over simulated engines: a Serve app of four simulated workers
(engine_backend: sim) whose model writes what the session's real engine wrote for the same
questions (documents recorded from the real app's job records). The same question gets the same
answer and forks the same way on both; threads are placed by the KV index that the simulated
engines' events feed (their prompts found cached on the worker that holds the prefix)."""
from __future__ import annotations

import json

import httpx
import pytest
from polling import final_record

from cluster.config import load

pytestmark = pytest.mark.integration
QUESTIONS = ["Q: 12*3+45*6\n", "Q: 71*5+6*8+9\n", "Q: 905*9+33*4+7*7\n"]


@pytest.fixture(scope="module")
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=300) as c:
        yield c


def run(client: httpx.Client, prompt: str, prefix: str = "") -> dict:
    r = client.post(f"{prefix}/v1/jobs", json={"prompt": prompt})
    assert r.status_code == 202, r.text
    rec = final_record(client, r.json()["id"], prefix=prefix)
    assert rec["status"] == "done", rec
    return rec


@pytest.fixture(scope="module")
def real(client) -> dict[str, dict]:
    """Each question's record on the session's app (vLLM engines)."""
    return {q: run(client, q) for q in QUESTIONS}


@pytest.fixture(scope="module")
def sim_prefix(real, ray_cluster, tmp_path_factory):
    """A second Serve app at /sim: four simulated workers writing what the real engine wrote."""
    from ray import serve

    from cluster import runtime
    from cluster.app import app_builder

    documents = tmp_path_factory.mktemp("sim") / "recorded.jsonl"
    documents.write_text("".join(json.dumps({"text": q + rec["result"]["text"]}) + "\n" for q, rec in real.items()))
    cfg = load(overrides={"worker_prefix": "loom-sim", "num_workers": 4,
                          "engine": {"engine_backend": "sim", "sim_documents": str(documents)}})
    serve.run(app_builder(cfg.to_dict()), name="loom-sim", route_prefix="/sim")
    yield "/sim"
    serve.delete("loom-sim")
    runtime.shutdown_actors(cfg, coordinator=False)  # the session's coordinator stays


def threads(rec: dict) -> list[dict]:
    return [n for n in rec["dag"]["nodes"] if n["kind"] == "thread"]


def test_the_same_question_gets_the_same_answer_over_simulated_engines(client, real, sim_prefix):
    for q, want in real.items():
        got = run(client, q, sim_prefix)
        assert got["result"]["text"] == want["result"]["text"], q
        assert got["result"]["answer"] == want["result"]["answer"]
        assert len(threads(got)) == len(threads(want)) >= 2  # it forked as the model did


def test_threads_find_their_prefix_cached_where_the_index_says(client, sim_prefix):
    rec = run(client, QUESTIONS[2], sim_prefix)
    workers = {n["placement"]["worker"] for n in rec["dag"]["nodes"] if n["placement"]}
    assert workers and all(w.startswith("loom-sim-") for w in workers)
    for node in threads(rec):
        placement = node["placement"]
        matched = placement["matched"].get(placement["worker"], 0)
        assert matched > 0 and node["cached_tokens"] >= matched  # the index saw the engine's blocks


def test_engines_report_their_steps_as_they_timed_them(real, sim_prefix):
    """What bench.sim_profile fits a profile to: the real engine's steps (vLLM's iteration stats)
    and the simulated engine's (its plans)."""
    import ray

    def steps(worker: str) -> list:
        return ray.get(ray.get_actor(worker, namespace="loom").step_samples.remote())

    for name in ("loom-worker-0", "loom-sim-0"):
        decoded = [s for s in steps(name) if s.decoding]
        assert decoded and all(s.seconds > 0 for s in decoded), name
    assert any(s.prefilled and s.first_token_s > 0 for s in steps("loom-worker-0"))
