"""The HTTP surface: a FastAPI app served by a thin Ray Serve deployment.

Routes: POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/chat/completions (SSE
with ``stream: true``), GET /v1/models, GET /healthz. Bad input gets a 4xx with a JSON
body ``{"error": {"message", "type", "param"}}``, OpenAI style.
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from orchestrator import tracing
from orchestrator.job import extract_answer
from orchestrator.records import JobRequest, RequestError
from orchestrator.service import JobService

CHAT_FIELDS = {"model", "messages", "stream", "temperature", "seed", "max_tokens", "loom", "user", "n"}


@contextmanager
def caller_trace(request: Request):
    """Make the caller's W3C traceparent current, so the job's trace continues it
    (the job task copies this context when it is created)."""
    token = tracing.attach({k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")})
    try:
        yield
    finally:
        tracing.detach(token)


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


async def read_json(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise RequestError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


def chat_to_job(body: dict, model_name: str, default_format: str) -> JobRequest:
    unknown = set(body) - CHAT_FIELDS
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported")
    loom = body.get("loom") or {}
    if not isinstance(loom, dict):
        raise RequestError("'loom' must be an object")
    budget = dict(loom.get("budget") or {})
    if body.get("max_tokens") is not None:
        budget["max_total_tokens"] = body["max_tokens"]
    return JobRequest.from_dict({
        "messages": body.get("messages"), "format": loom.get("format", default_format),
        "mode": loom.get("mode", "parallel"), "budget": budget,
        "temperature": body.get("temperature", 0.0), "seed": body.get("seed"),
    })


def build_app(service: JobService, model_name: str, default_format: str = "threadweaver",
              health=None) -> FastAPI:
    app = FastAPI(title="Loom", version="0.1.0")

    @app.exception_handler(RequestError)
    async def _bad_request(_, exc: RequestError):
        return error(400, str(exc))

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request):
        body = await read_json(request)
        body.setdefault("format", default_format)
        with caller_trace(request):
            record = await service.submit(JobRequest.from_dict(body))
        return JSONResponse({"id": record.id, "status": record.status}, status_code=202)

    @app.get("/v1/jobs")
    async def list_jobs(limit: int = 100):
        if not 1 <= limit <= 1000:
            raise RequestError("limit must be between 1 and 1000")
        records = await service.store.list(limit)
        return {"object": "list", "data": [{"id": r.id, "status": r.status, "created": r.created}
                                           for r in records]}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str):
        record = await service.store.get(job_id)
        if record is None:
            return error(404, f"no job {job_id!r}", "not_found_error")
        return record.to_json()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "loom"}]}

    @app.get("/healthz")
    async def healthz():
        extra = await health() if health else {}
        return {"status": "ok", **extra}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request)
        if body.get("model", model_name) != model_name:
            return error(404, f"model {body.get('model')!r} is not served here; try {model_name!r}",
                         "model_not_found")
        job = chat_to_job(body, model_name, default_format)
        with caller_trace(request):
            if body.get("stream"):
                record = await service.submit(job, emit=(queue := asyncio.Queue()).put_nowait)
                return StreamingResponse(stream_chat(service, record, queue, model_name),
                                         media_type="text/event-stream")
            record = await service.run(job)
        if record.status == "failed":
            return error(500, record.error, "server_error")
        return completion(record, model_name)

    return app


def completion(record, model_name: str) -> dict:
    text = record.result.get("text", "")
    answer = record.result.get("answer", "")
    reasoning = text[:len(text) - len(answer)] if answer and text.rstrip().endswith(answer) else text
    return {
        "id": "chatcmpl-" + record.id, "object": "chat.completion", "created": int(record.created),
        "model": model_name,
        "choices": [{"index": 0, "finish_reason": _finish(record),
                     "message": {"role": "assistant", "content": answer, "reasoning": reasoning}}],
        "usage": _usage(record),
        "loom": {"job_id": record.id, "notes": record.notes,
                 "critical_path_tokens": record.result.get("critical_path_tokens", 0)},
    }


def _finish(record) -> str:
    return "length" if record.result.get("finish") in ("length", "budget") else "stop"


def _usage(record) -> dict:
    dag = record.dag or {}
    completion_tokens = dag.get("total_tokens", 0)
    prompt = next((n["prompt_tokens"] for n in dag.get("nodes", [])), 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


class ReasoningSplitter:
    """Passes streamed text through as reasoning up to the end-of-thinking tag; the answer
    after it is sent once, as content, when the job ends."""

    CLOSERS = ("</think>", "</Think>")

    def __init__(self):
        self.seen = ""
        self.done = False

    def reasoning(self, piece: str) -> str:
        if self.done:
            return ""
        start = len(self.seen)
        self.seen += piece
        ends = [self.seen.find(c) + len(c) for c in self.CLOSERS if c in self.seen]
        if not ends:
            return piece
        self.done = True
        return self.seen[start:min(ends)]


async def stream_chat(service: JobService, record, queue: asyncio.Queue, model_name: str):
    """SSE: reasoning deltas as the main context grows, then the answer, then [DONE]."""
    cid, created = "chatcmpl-" + record.id, int(time.time())

    def sse(delta: dict, finish: str | None = None) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n"

    yield sse({"role": "assistant", "content": ""})
    waiter = asyncio.ensure_future(service.wait(record.id))
    split = ReasoningSplitter()
    while not (waiter.done() and queue.empty()):
        try:
            text = split.reasoning(await asyncio.wait_for(queue.get(), timeout=0.1))
        except TimeoutError:
            continue
        if text:
            yield sse({"reasoning": text})
    final = waiter.result()
    if final.status == "failed":
        yield f"data: {json.dumps({'error': {'message': final.error, 'type': 'server_error'}})}\n\n"
    else:
        yield sse({"content": extract_answer(final.result.get("text", ""))}, _finish(final))
    yield "data: [DONE]\n\n"
