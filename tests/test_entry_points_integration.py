"""The same question through every entry point a user has gives the same text and answer:
``loom run`` (attached to the session's cluster), ``POST /v1/jobs`` (messages, and the rendered
prompt), ``/v1/chat/completions`` plain and streamed, ``loom submit`` and the Ray Jobs entrypoint.
Each way of asking is spelled the way a user of that entry point would spell it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from polling import final_record

from models.task import parse_question

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["Q: 905*9+14*3", "7*8+6*5", "Q: 12*3 + 45*6 + 7"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def outcome(text: str, answer: str) -> dict:
    return {"text": text, "answer": answer}


def via_record(rec: dict) -> dict:
    assert rec["status"] == "done", rec
    return outcome(rec["result"]["text"], rec["result"]["answer"])


def loom_run(question: str, address: str) -> dict:
    out = cli("-m", "cluster.cli", "run", question, "--address", address, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return via_record(json.loads(out.stdout))


def loom_submit(question: str, url: str) -> dict:
    out = cli("-m", "cluster.cli", "submit", question, "--url", url, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return via_record(json.loads(out.stdout))


def jobs_api(client: httpx.Client, body: dict) -> dict:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return via_record(final_record(client, r.json()["id"]))


def chat(client: httpx.Client, question: str) -> dict:
    r = client.post("/v1/chat/completions", json={"model": "loom-arith",
                                                  "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    return outcome(msg["reasoning"] + msg["content"], msg["content"])


def chat_streamed(client: httpx.Client, question: str) -> dict:
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": question}], "stream": True}) as r:
        assert r.status_code == 200
        chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    reasoning = "".join(d.get("reasoning", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    return outcome(reasoning + content, content)


def ray_jobs_entrypoint(client: httpx.Client, questions: list[str], url: str, tmp: Path) -> list[dict]:
    (tmp / "questions.jsonl").write_text("\n".join(questions) + "\n")
    out = cli("-m", "cluster.jobs", "--input", str(tmp / "questions.jsonl"), "--output",
              str(tmp / "results.jsonl"), "--url", url)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(x) for x in (tmp / "results.jsonl").read_text().splitlines()]
    return [{**via_record(final_record(client, row["job_id"])), "row_answer": row["answer"]} for row in rows]


def test_every_entry_point_gives_the_same_text_and_answer(serve_url, ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    with httpx.Client(base_url=serve_url, timeout=300) as client:
        batch = ray_jobs_entrypoint(client, QUESTIONS, serve_url, tmp_path)
        for question, from_batch in zip(QUESTIONS, batch):
            q = parse_question(question)
            seen = {
                "loom run": loom_run(question, address),
                "POST /v1/jobs messages": jobs_api(client, {"messages": [{"role": "user", "content": question}]}),
                "POST /v1/jobs prompt": jobs_api(client, {"prompt": q.prompt}),
                "chat": chat(client, question),
                "chat streamed": chat_streamed(client, question),
                "loom submit": loom_submit(question, serve_url),
                "Ray Jobs entrypoint": outcome(from_batch["text"], from_batch["row_answer"]),
            }
            expected = seen["POST /v1/jobs prompt"]  # the model's own prompt, verbatim
            assert expected["answer"] == f"A: {q.answer}", (question, expected)
            assert "<Parallel>" in expected["text"]  # every question here has two or more products
            for entry, got in seen.items():
                assert got == expected, (question, entry)
