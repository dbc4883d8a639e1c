"""Run a batch of jobs from a JSONL file against a running Loom app (the Ray Jobs entrypoint).

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m cluster.jobs --input questions.jsonl --output results.jsonl

Every input line is one job: a JSON object with the fields of ``POST /v1/jobs`` plus an
optional ``id``, a JSON string, or a bare line of text (both a question, sent as a user
message as ``loom submit`` does: see cluster/inputs.py). Every input line gets
one result line in ``--output``, in input order; a bad line gets an error result and the batch
goes on. Progress goes to stdout, which Ray Jobs shows as the job's logs. Exit code: 0 every
job done, 1 some line failed, 2 nothing ran (bad arguments, unreadable input, unreachable app).
See docs/ray-jobs.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from cluster.inputs import InputError, parse_budget, question_body
from orchestrator.budget.policy import BudgetError, JobBudget
from orchestrator.plan.published import FORMATS

DEFAULT_URL = "http://127.0.0.1:8000"
PENDING = ("queued", "running")
EXIT_OK, EXIT_FAILED_LINES, EXIT_CANNOT_RUN = 0, 1, 2
MAX_POLL_ERRORS = 10  # consecutive failed polls of one job before it is given up


@dataclass
class Item:
    """One input line: the body to POST, or why the line is bad."""

    line: int
    id: Any = None
    body: dict | None = None
    error: str | None = None


@dataclass
class Row:
    """One output line."""

    line: int
    id: Any = None
    job_id: str | None = None
    status: str = "error"  # the job's final status; "error": it never ran; "timeout"
    answer: str | None = None
    total_tokens: int | None = None
    critical_path_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class JobError(Exception):
    def __init__(self, message: str, status: str = "error"):
        super().__init__(message)
        self.status = status


class _Retry(Exception):
    """A poll that may succeed later (connection lost, 5xx while Serve restarts)."""


def say(message: str) -> None:
    print(message, flush=True)


# -- input --------------------------------------------------------------------------------

def parse_line(n: int, text: str, fmt: str | None = None, budget: dict | None = None) -> Item | None:
    """Line ``n`` of the input as an Item (None for a blank line). ``fmt`` and ``budget`` are
    the batch defaults; a line's own ``format`` and budget keys win."""
    text = text.strip()
    if not text:
        return None
    if text[0] not in '{["':
        return Item(n, body=with_defaults(question_body(text), fmt, budget))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Item(n, error=f"not valid JSON: {e.msg} (column {e.colno})")
    if isinstance(obj, str):
        return question_item(n, obj, fmt, budget)
    if not isinstance(obj, dict):
        return Item(n, error="a JSON array is not a job: give an object or a string")
    line_id = obj.pop("id", None)
    return Item(n, id=line_id, body=with_defaults(obj, fmt, budget))


def question_item(n: int, text: str, fmt: str | None, budget: dict | None) -> Item:
    """A JSON string line: a question, as a bare line is (an empty one is a bad line)."""
    try:
        return Item(n, body=with_defaults(question_body(text), fmt, budget))
    except InputError as e:
        return Item(n, error=str(e))


def with_defaults(body: dict, fmt: str | None, budget: dict | None) -> dict:
    if fmt and "format" not in body:
        body["format"] = fmt
    if budget and body.get("budget") is None:
        body["budget"] = dict(budget)
    elif budget and isinstance(body["budget"], dict):
        body["budget"] = {**budget, **body["budget"]}
    return body


def read_items(path: str, fmt: str | None = None, budget: dict | None = None) -> list[Item]:
    """Every non-blank line of the JSONL file at ``path``; raises OSError if it cannot be read."""
    items = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                items.append(Item(n, error=f"not UTF-8 text: {e.reason} at byte {e.start}"))
                continue
            if item := parse_line(n, text, fmt, budget):
                items.append(item)
    return items


# -- one job ------------------------------------------------------------------------------

def error_message(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.text[:300] or r.reason_phrase


async def submit(client: httpx.AsyncClient, body: dict) -> str:
    try:
        r = await client.post("/v1/jobs", json=body)
    except httpx.HTTPError as e:
        raise JobError(f"cannot reach {client.base_url}: {e}") from None
    if r.status_code != 202:
        raise JobError(f"POST /v1/jobs answered {r.status_code}: {error_message(r)}")
    return r.json()["id"]


async def fetch(client: httpx.AsyncClient, job_id: str) -> dict:
    try:
        r = await client.get(f"/v1/jobs/{job_id}")
    except httpx.TransportError as e:
        raise _Retry(str(e) or type(e).__name__) from None
    if r.status_code >= 500:
        raise _Retry(f"GET /v1/jobs/{job_id} answered {r.status_code}: {error_message(r)}")
    if r.status_code != 200:
        raise JobError(f"GET /v1/jobs/{job_id} answered {r.status_code}: {error_message(r)}")
    return r.json()


async def wait(client: httpx.AsyncClient, job_id: str, timeout_s: float, poll_s: float) -> dict:
    """Poll the job until its status is not queued or running."""
    deadline, errors, status = time.monotonic() + timeout_s, 0, "queued"
    while True:
        try:
            rec, errors = await fetch(client, job_id), 0
            if (status := rec["status"]) not in PENDING:
                return rec
        except _Retry as e:
            errors += 1
            if errors >= MAX_POLL_ERRORS:
                raise JobError(f"lost contact with {client.base_url} while waiting: {e}") from None
        if time.monotonic() >= deadline:
            raise JobError(f"still {status} after {timeout_s:g}s (--timeout-s)", "timeout")
        await asyncio.sleep(poll_s)


def fill(row: Row, rec: dict) -> Row:
    result, dag = rec.get("result") or {}, rec.get("dag") or {}
    row.status = rec["status"]
    row.answer = result.get("answer")
    row.total_tokens = result.get("total_tokens", dag.get("total_tokens"))
    row.critical_path_tokens = result.get("critical_path_tokens", dag.get("critical_path_tokens"))
    if not row.ok:
        finish = f" (finish: {result['finish']})" if result.get("finish") else ""
        row.error = rec.get("error") or f"job {row.status}{finish}"
    return row


async def run_one(client: httpx.AsyncClient, item: Item, timeout_s: float, poll_s: float) -> Row:
    """The result row of one item; never raises."""
    row = Row(item.line, item.id)
    if item.error:
        row.error = item.error
        return row
    try:
        row.job_id = await submit(client, item.body)
        return fill(row, await wait(client, row.job_id, timeout_s, poll_s))
    except JobError as e:
        row.status, row.error = e.status, str(e)
    except Exception as e:  # noqa: BLE001 -- a surprise in one job must not end the batch
        row.status, row.error = "error", f"{type(e).__name__}: {e}"
    return row


# -- the batch ----------------------------------------------------------------------------

class Progress:
    def __init__(self, total: int):
        self.total, self.done, self.failed, self.t0 = total, 0, 0, time.monotonic()

    def finished(self, row: Row) -> None:
        self.done += 1
        self.failed += not row.ok
        say(f"line {row.line}{'' if row.id is None else f' (id {row.id})'}: {describe(row)}")

    def summary(self) -> str:
        minutes = max(time.monotonic() - self.t0, 1e-6) / 60
        return f"done {self.done}/{self.total} (failed {self.failed}) {self.done / minutes:.1f} jobs/min"


def describe(row: Row) -> str:
    if row.ok:
        return (f"{row.job_id} done: {row.answer} ({row.total_tokens} tokens, "
                f"critical path {row.critical_path_tokens})")
    return f"{row.job_id + ' ' if row.job_id else ''}{row.status}: {row.error}"


async def report_every(progress: Progress, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        say(progress.summary())


async def run_batch(items: list[Item], url: str, concurrency: int = 8, timeout_s: float = 600.0,
                    poll_s: float = 0.5, progress_s: float = 10.0,
                    on_row: Callable[[int, Row], None] | None = None,
                    client: httpx.AsyncClient | None = None) -> list[Row]:
    """Run every item against the Loom app at ``url``, at most ``concurrency`` jobs at once.
    Returns the rows in input order; ``on_row(index, row)`` is called as each one finishes."""
    gate, progress = asyncio.Semaphore(max(1, concurrency)), Progress(len(items))
    own = httpx.AsyncClient(base_url=url, timeout=30) if client is None else contextlib.nullcontext(client)

    async with own as c:
        async def one(i: int, item: Item) -> Row:
            async with gate:
                row = await run_one(c, item, timeout_s, poll_s)
            progress.finished(row)
            if on_row:
                on_row(i, row)
            return row

        ticker = asyncio.create_task(report_every(progress, progress_s))
        try:
            rows = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        finally:
            ticker.cancel()
    say(progress.summary())
    return list(rows)


class OrderedWriter:
    """Writes rows in input order as they finish: a batch stopped midway keeps every row up
    to the first unfinished one."""

    def __init__(self, f):
        self.f, self.next, self.waiting = f, 0, {}

    def __call__(self, index: int, row: Row) -> None:
        self.waiting[index] = row
        while self.next in self.waiting:
            self.f.write(self.waiting.pop(self.next).to_json() + "\n")
            self.next += 1
        self.f.flush()


# -- command line -------------------------------------------------------------------------

def check_app(url: str) -> str | None:
    """None if the Loom app at ``url`` answers GET /healthz, else what is wrong."""
    try:
        r = httpx.get(url.rstrip("/") + "/healthz", timeout=15)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        return f"cannot reach the Loom app at {url} ({e}); give --url or set LOOM_URL"
    if r.status_code != 200:
        return f"the Loom app at {url} is not healthy: GET /healthz answered {r.status_code}"
    return None


def fail(message: str) -> int:
    print(f"loom-jobs: {message}", file=sys.stderr, flush=True)
    return EXIT_CANNOT_RUN


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.jobs",
                                description="Run a JSONL batch of jobs against a running Loom app.")
    p.add_argument("--input", required=True, help="JSONL, one job per line")
    p.add_argument("--output", required=True, help="JSONL results, one per input line, in input order")
    p.add_argument("--url", default=os.environ.get("LOOM_URL") or DEFAULT_URL,
                   help=f"the Loom app (default: $LOOM_URL or {DEFAULT_URL})")
    p.add_argument("--concurrency", type=positive(int), default=8, help="jobs in flight at once")
    p.add_argument("--format", choices=list(FORMATS), default=None, help="for lines without one")
    p.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                   help="budget default for every line (a line's own budget keys win)")
    p.add_argument("--timeout-s", type=positive(float), default=600.0, help="per job, from its submission")
    p.add_argument("--poll-s", type=positive(float), default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--progress-s", type=positive(float), default=10.0, help="seconds between summaries")
    return p


async def run_file(args, items: list[Item], out) -> int:
    say(f"{len(items)} jobs from {args.input} to {args.url}, {args.concurrency} at a time")
    rows = await run_batch(items, args.url, args.concurrency, args.timeout_s, args.poll_s,
                           args.progress_s, on_row=OrderedWriter(out))
    failed = [r.line for r in rows if not r.ok]
    say(f"wrote {len(rows)} results to {os.path.abspath(args.output)}"
        + (f"; failed lines: {', '.join(map(str, failed))}" if failed else ""))
    return EXIT_FAILED_LINES if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        budget = parse_budget(args.budget)
        JobBudget.from_dict(budget)
    except InputError as e:
        return fail(str(e))
    except BudgetError as e:
        return fail(f"--budget: {e}")
    try:
        items = read_items(args.input, args.format, budget)
    except FileNotFoundError:
        return fail(f"input file {args.input!r} not found (working directory {os.getcwd()})")
    except OSError as e:
        return fail(f"cannot read the input file {args.input!r}: {e.strerror}")
    if problem := check_app(args.url):
        return fail(problem)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as out:
            return asyncio.run(run_file(args, items, out))
    except OSError as e:
        return fail(f"cannot write the output file {args.output!r}: {e.strerror or e}")


if __name__ == "__main__":
    sys.exit(main())
