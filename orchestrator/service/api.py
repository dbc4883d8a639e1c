"""The HTTP surface: a FastAPI app served by a thin Ray Serve deployment.

Routes: POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/chat/completions (SSE
with ``stream: true``), GET /v1/models, GET /healthz. Every error, FastAPI's own 404/405
included, is a JSON body ``{"error": {"message", "type"}}``, OpenAI style: 400 bad input
(orchestrator/schema.py names the field), 404 unknown job/model/route, 405, 413 a body over
``max_request_bytes``, 503 while the service cannot take work.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from orchestrator.driver.job import extract_answer
from orchestrator.driver.records import RequestError
from orchestrator.service.health import Health
from orchestrator.service.jobs import JobService
from orchestrator.service.schema import chat_request, decode_json, job_request
from orchestrator.service.store import StoreUnavailable
from orchestrator.telemetry import tracing

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 1 << 20
RETRY_AFTER_S = 2  # what a 503 asks the client to wait
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "method_not_allowed",
               413: "request_too_large", 503: "service_unavailable"}


class RequestTooLarge(RequestError):
    status = 413


@contextmanager
def caller_trace(request: Request):
    """Make the caller's W3C traceparent current, so the job's trace continues it
    (the job task copies this context when it is created)."""
    token = tracing.attach({k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")})
    try:
        yield
    finally:
        tracing.detach(token)


def error(status: int, message: str, kind: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind or ERROR_TYPES.get(status, "server_error")}},
                        status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> object:
    """The decoded JSON body; refused before reading when its declared size is over ``limit``,
    and while reading when it grows past it (a missing or false Content-Length)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is {declared} bytes; the limit is {limit} (max_request_bytes)")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes (max_request_bytes)")
    return decode_json(bytes(data))


def build_app(service: JobService, model_name: str, default_format: str = "threadweaver",
              health: Callable[[], Awaitable[Health]] | None = None,
              max_request_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    app = FastAPI(title="Loom", version="0.1.0")
    _error_handlers(app)

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request):
        job = job_request(await read_body(request, max_request_bytes), default_format)
        with caller_trace(request):
            record = await service.submit(job)
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
            return error(404, f"no job {job_id!r}")
        return record.to_json()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "loom"}]}

    @app.get("/healthz")
    async def healthz():
        state = await health() if health else Health("ok", model=model_name)
        return JSONResponse(state.to_json(), status_code=200 if state.can_take_work else 503)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body, job = chat_request(await read_body(request, max_request_bytes), default_format)
        if body.model not in (None, model_name):
            return error(404, f"model {body.model!r} is not served here; try {model_name!r}", "model_not_found")
        with caller_trace(request):
            if body.stream:
                record = await service.submit(job, emit=(queue := asyncio.Queue()).put_nowait)
                usage = body.stream_options is not None and body.stream_options.include_usage
                return StreamingResponse(stream_chat(service, record, queue, model_name, usage),
                                         media_type="text/event-stream")
            record = await service.run(job)
        if record.status == "failed":
            return error(500, record.error, "server_error")
        return completion(record, model_name)

    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error a JSON body: ours (RequestError), FastAPI's routing and query errors, and a
    last resort for bugs (logged; the caller gets a 500 JSON, never a plain-text page)."""

    @app.exception_handler(RequestError)
    async def _bad_request(_, exc: RequestError):
        return error(getattr(exc, "status", 400), str(exc))

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_, exc: StoreUnavailable):
        return error(503, f"{exc}; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(HTTPException)
    async def _http(_, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        where = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())
        return error(400, where or "invalid request")

    @app.exception_handler(Exception)
    async def _bug(_, exc: Exception):
        log.exception("unhandled error in the API")
        return error(500, f"internal error: {type(exc).__name__}", "server_error")


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer): the answer is what follows the reasoning (``extract_answer``); the
    reasoning is everything before it, so that the two together are the job's text."""
    answer = extract_answer(text)
    at = text.rfind(answer) if answer else -1
    return (text[:at], answer) if at >= 0 else (text, "")


def completion(record, model_name: str) -> dict:
    reasoning, answer = split_reasoning(record.result.get("text", ""))
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
    completion_tokens = (record.dag or {}).get("total_tokens", 0)
    prompt = record.result.get("prompt_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


class ReasoningSplitter:
    """Passes streamed text through as reasoning up to the end-of-thinking tag; the answer
    after it is sent once, as content, when the job ends."""

    CLOSERS = ("</think>", "</Think>")

    def __init__(self):
        self.sent = ""  # the reasoning passed through so far
        self.done = False

    def reasoning(self, piece: str) -> str:
        if self.done:
            return ""
        seen = self.sent + piece
        ends = [seen.find(c) + len(c) for c in self.CLOSERS if c in seen]
        if ends:
            self.done = True
            piece = seen[len(self.sent):min(ends)]
        self.sent += piece
        return piece


async def stream_chat(service: JobService, record, queue: asyncio.Queue, model_name: str,
                      include_usage: bool = False):
    """SSE: reasoning deltas as the main context grows, then the answer, then (asked for with
    ``stream_options.include_usage``) a usage chunk with no choices, as OpenAI's; then [DONE]."""
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
        reasoning, answer = split_reasoning(final.result.get("text", ""))
        if len(reasoning) > len(split.sent) and reasoning.startswith(split.sent):
            yield sse({"reasoning": reasoning[len(split.sent):]})  # what followed the last streamed piece
        yield sse({"content": answer}, _finish(final))
        if include_usage:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [], "usage": _usage(final)}
            yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
