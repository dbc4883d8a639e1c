"""The Ray Jobs batch entrypoint, ``python -m cluster.jobs``, run as a subprocess against the
session's real Serve app. The session's Ray cluster has no dashboard (conftest starts it with
``include_dashboard=False``), so ``ray job submit`` itself is not exercised here: the second
test runs the entrypoint the way a Ray Job does (a shell command in its working directory,
relative paths, the app's URL from ``LOOM_URL``). docs/ray-jobs.md has the submit command."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from ports import free_port

from models.task import parse_question

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def run_jobs(args: list[str], cwd: Path = ROOT, shell: bool = False, **env) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "cluster.jobs", *args]
    cmd = shlex.join(argv) if shell else argv
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(cmd, cwd=cwd, env=environ, shell=shell, capture_output=True, text=True,
                          timeout=600, check=False)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_done(row: dict, question: str) -> None:
    """Done with an answer of the task's form (its correctness is the model tests' business)."""
    parse_question(question)  # the inputs are in the model's task
    assert row["status"] == "done", row
    assert re.match(r"^A: \d+$", row["answer"])
    assert row["job_id"].startswith("job-") and row["error"] is None
    assert row["total_tokens"] >= row["critical_path_tokens"] > 0


def test_batch_in_input_order_with_a_bad_line(serve_url, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join([
        json.dumps({"id": "first", "prompt": "Q: 12*3+45*6\n"}),
        "Q: 7*8+6*5",                                  # a bare prompt
        '{"prompt": "Q: 1*2+3\\n"',                    # bad: the object is not closed
        json.dumps({"id": 4, "messages": [{"role": "user", "content": "99*9+1"}]}),
    ]) + "\n")
    results = tmp_path / "results.jsonl"
    out = run_jobs(["--input", str(questions), "--output", str(results), "--url", serve_url,
                    "--concurrency", "2", "--progress-s", "2"])

    assert out.returncode == 1, out.stdout + out.stderr  # because of line 3
    rows = read_rows(results)
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert [r["id"] for r in rows] == ["first", None, None, 4]
    assert_done(rows[0], "Q: 12*3+45*6")
    assert_done(rows[1], "Q: 7*8+6*5")
    assert_done(rows[3], "99*9+1")
    bad = rows[2]
    assert bad["status"] == "error" and bad["job_id"] is None and bad["answer"] is None
    assert "not valid JSON" in bad["error"]
    assert "line 3: error: not valid JSON" in out.stdout
    assert "done 4/4 (failed 1)" in out.stdout and "jobs/min" in out.stdout


def test_entrypoint_as_a_ray_job_runs_it(serve_url, tmp_path):
    """The documented entrypoint, verbatim: a shell command in the job's working directory,
    relative paths, the URL from LOOM_URL, batch defaults from --format and --budget."""
    (tmp_path / "questions.jsonl").write_text("Q: 905*9+14*3\n" + json.dumps({"prompt": "Q: 3*4+5\n"}) + "\n")
    out = run_jobs(["--input", "questions.jsonl", "--output", "results.jsonl",
                    "--format", "threadweaver", "--budget", "max_width=1"],
                   cwd=tmp_path, shell=True, LOOM_URL=serve_url)

    assert out.returncode == 0, out.stdout + out.stderr
    rows = read_rows(tmp_path / "results.jsonl")
    assert_done(rows[0], "Q: 905*9+14*3")
    assert_done(rows[1], "Q: 3*4+5")
    assert "done 2/2 (failed 0)" in out.stdout
    record = httpx.get(f"{serve_url}/v1/jobs/{rows[0]['job_id']}", timeout=30).json()
    assert record["request"]["budget"] == {"max_width": 1}
    assert record["request"]["format"] == "threadweaver"


def test_missing_input_file_is_named(tmp_path):
    out = run_jobs(["--input", "no-such.jsonl", "--output", "results.jsonl", "--url", "http://127.0.0.1:9"],
                   cwd=tmp_path)
    assert out.returncode == 2
    assert "input file 'no-such.jsonl' not found" in out.stderr and str(tmp_path) in out.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_unreachable_app_is_named(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    (tmp_path / "questions.jsonl").write_text("Q: 1+2\n")
    out = run_jobs(["--input", "questions.jsonl", "--output", "results.jsonl"], cwd=tmp_path, LOOM_URL=url)
    assert out.returncode == 2
    assert f"cannot reach the Loom app at {url}" in out.stderr
    assert not (tmp_path / "results.jsonl").exists()
