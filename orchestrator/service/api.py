"""The HTTP surface: a FastAPI app served by a thin Ray Serve deployment.

Routes: POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/chat/completions (SSE
with ``stream: true``), GET /v1/models, GET /healthz. Every error, FastAPI's own 404/405
included, is a JSON body ``{"error": {"message", "type"}}``, OpenAI style: 400 bad input
(service/schema.py names the field), 404 unknown job/model/route, 405, 413 a body over
``max_request_bytes``, 503 while the service cannot take work.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import contextmanager

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from orchestrator.driver.records import JobStatus, RequestError
from orchestrator.service import openapi as doc
from orchestrator.service.chat import completion, stream_chat
from orchestrator.service.health import Health
from orchestrator.service.jobs import JobService
from orchestrator.service.schema import ChatBody, JobBody, chat_request, decode_json, job_request
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


def build_app(service: JobService, model_name: str, health: Callable[[], Awaitable[Health]] | None = None,
              max_request_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    app = FastAPI(title="Loom", version="0.1.0")
    _error_handlers(app)
    _job_routes(app, service, max_request_bytes)
    _chat_routes(app, service, model_name, max_request_bytes)
    _info_routes(app, model_name, health)
    doc.publish(app, model_name)
    return app


def _job_routes(app: FastAPI, service: JobService, max_request_bytes: int) -> None:
    @app.post("/v1/jobs", status_code=202, response_model=doc.JobAccepted, openapi_extra=doc.body(JobBody),
              responses={400: doc.BAD_INPUT, 413: doc.TOO_LARGE, 503: doc.UNAVAILABLE})
    async def submit_job(request: Request):
        """Start a job; it runs in the background (poll GET /v1/jobs/{job_id})."""
        job = job_request(await read_body(request, max_request_bytes))
        with caller_trace(request):
            record = await service.submit(job)
        return JSONResponse({"id": record.id, "status": record.status}, status_code=202)

    @app.get("/v1/jobs", response_model=doc.JobList, responses={400: doc.BAD_INPUT, 503: doc.UNAVAILABLE})
    async def list_jobs(limit: int = Query(100, ge=1, le=1000, description="How many, newest first")):
        records = await service.store.list(limit)
        return {"object": "list", "data": [{"id": r.id, "status": r.status, "created": r.created}
                                           for r in records]}

    @app.get("/v1/jobs/{job_id}", response_model=doc.JobRecordOut,
             responses={404: doc.error_doc("No job with this id"), 503: doc.UNAVAILABLE})
    async def get_job(job_id: str):
        record = await service.store.get(job_id)
        if record is None:
            return error(404, f"no job {job_id!r}")
        return JSONResponse(record.to_json())


def _chat_routes(app: FastAPI, service: JobService, model_name: str, max_request_bytes: int) -> None:
    @app.post("/v1/chat/completions", response_model=doc.ChatCompletion, openapi_extra=doc.body(ChatBody), responses={
        200: {"content": {"text/event-stream": {"schema": doc.SSE_EVENT}},
              "description": "A chat.completion; with stream: true, chat.completion.chunk server-sent events"},
        400: doc.BAD_INPUT, 404: doc.error_doc("The model is not served here"), 413: doc.TOO_LARGE,
        500: doc.error_doc("The job failed (the message says why)"), 503: doc.UNAVAILABLE})
    async def chat(request: Request):
        """OpenAI's chat completion; the job forks as the model plans."""
        body, job = chat_request(await read_body(request, max_request_bytes))
        if body.model not in (None, model_name):
            return error(404, f"model {body.model!r} is not served here; try {model_name!r}", "model_not_found")
        with caller_trace(request):
            if body.stream:
                record = await service.submit(job, emit=(queue := asyncio.Queue()).put_nowait)
                usage = body.stream_options is not None and body.stream_options.include_usage
                return StreamingResponse(stream_chat(service, record, queue, model_name, usage),
                                         media_type="text/event-stream")
            record = await service.run(job)
        if record.status == JobStatus.FAILED:
            return error(500, record.error, "server_error")
        return completion(record, model_name)


def _info_routes(app: FastAPI, model_name: str, health: Callable[[], Awaitable[Health]] | None) -> None:
    @app.get("/v1/models", response_model=doc.ModelList)
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "loom"}]}

    @app.get("/healthz", response_model=doc.HealthOut,
             responses={503: {"model": doc.HealthOut, "description": "No worker is well, or no coordinator"}})
    async def healthz():
        state = await health() if health else Health("ok", model=model_name)
        return JSONResponse(state.to_json(), status_code=200 if state.can_take_work else 503)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods the request's path answers to, over all of the app's routes."""
    methods: set[str] = set()
    for route in app.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


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
    async def _http(request: Request, exc: HTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return error(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        where = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())
        return error(400, where or "invalid request")

    @app.exception_handler(Exception)
    async def _bug(_, exc: Exception):
        log.exception("unhandled error in the API")
        return error(500, f"internal error: {type(exc).__name__}", "server_error")
