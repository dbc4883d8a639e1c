"""What ``/openapi.json`` says of Loom's routes: every request body, response and error.

The request bodies are read by hand (``api.read_body``: a size limit, strict JSON), so FastAPI
cannot see them: each route names its body model here (``body``), and ``publish`` puts those
models' JSON Schemas in the spec, the same models that validate the requests (service/schema.py),
so the spec and the door cannot disagree. The response models below only document: the routes
build their JSON themselves. The OpenAI-compatible routes keep OpenAI's shapes.
"""
from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.driver.records import JobStatus
from orchestrator.service.schema import ChatBody, JobBody

SCHEMAS = "#/components/schemas/"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Doc):
    message: str = Field(description="What was wrong, naming the field where there is one")
    type: str = Field(description="invalid_request_error | not_found_error | model_not_found | "
                                  "method_not_allowed | request_too_large | service_unavailable | server_error")


class ErrorBody(_Doc):
    """Every error, OpenAI style."""

    error: ErrorDetail


class JobAccepted(_Doc):
    id: str = Field(description="The job's id: GET /v1/jobs/{id} for its record")
    status: JobStatus


class JobSummary(_Doc):
    id: str
    status: JobStatus
    created: float = Field(description="Epoch seconds")


class JobList(_Doc):
    object: Literal["list"]
    data: list[JobSummary] = Field(description="Newest first")


class JobRecordOut(_Doc):
    """A job's record: its request as validated, its thread tree and what it used and produced."""

    id: str
    request: dict = Field(description="The request as the server completed it (format and budget filled in)")
    status: JobStatus
    created: float = Field(description="Epoch seconds")
    started: float = Field(description="Epoch seconds; 0 until the job starts")
    finished: float = Field(description="Epoch seconds; 0 until the job ends")
    dag: dict = Field(description="The thread tree: nodes (main segments, blocks, threads) with each one's "
                                  "worker, tokens, cached tokens, placement and KV origin")
    usage: dict = Field(description="Tokens and forks used against the job's budget")
    result: dict = Field(description="text, answer, finish, prompt_tokens, critical_path_tokens")
    notes: list[str] = Field(description="Repairs, fallbacks and budget decisions, in order")
    error: str = Field(description="Why the job failed; empty otherwise")
    version: int = Field(description="The record's schema version")


class HealthOut(_Doc):
    status: Literal["ok", "degraded", "unavailable"]
    model: str
    replica: str = Field(description="The ingress replica that answered (host:pid)")
    workers: dict[str, dict] = Field(description="Each worker's state and KV-event progress")
    coordinator: dict = Field(description="The budget coordinator's state and cluster view")


class ModelCard(_Doc):
    id: str
    object: Literal["model"]
    owned_by: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[ModelCard]


class ChatMessageOut(_Doc):
    role: Literal["assistant"]
    content: str = Field(description="The answer")
    reasoning: str = Field(description="The reasoning before the answer, threads joined in")


class ChatChoice(_Doc):
    index: int
    finish_reason: Literal["stop", "length"]
    message: ChatMessageOut


class Usage(_Doc):
    prompt_tokens: int
    completion_tokens: int = Field(description="Every thread's generated tokens")
    total_tokens: int


class LoomExtra(_Doc):
    job_id: str
    notes: list[str]
    critical_path_tokens: int


class ChatCompletion(_Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    loom: LoomExtra


SSE_EVENT = {"type": "object", "required": ["data"], "description": "One server-sent event",
             "properties": {"data": {"type": "string", "description": "A chat.completion.chunk as JSON, "
                                     "an {\"error\": ...} object if the job failed, or [DONE] last"},
                            "event": {"type": "string"}}}


def error_doc(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


BAD_INPUT = error_doc("The body or a parameter is invalid; the message names the field")
TOO_LARGE = error_doc("The body is over max_request_bytes")
UNAVAILABLE = {**error_doc("The job store or the engines cannot take work now"),
               "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}}


def body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` for a route whose JSON body ``model`` validates."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": SCHEMAS + model.__name__}}}}}


def publish(app: FastAPI, model_name: str) -> None:
    """Make ``app.openapi()`` include the hand-read bodies' schemas (JobBody, ChatBody)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=__doc__.split("\n\n")[0],
                               routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            _drop_422(spec, schemas)
            for model in (JobBody, ChatBody):
                schema = model.model_json_schema(ref_template=SCHEMAS + "{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            schemas["ChatBody"]["properties"]["model"] = {
                "anyOf": [{"type": "string", "enum": [model_name]}, {"type": "null"}],
                "description": "The served model; another name answers 404"}
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


def _drop_422(spec: dict, schemas: dict) -> None:
    """FastAPI documents its own 422 for every route with parameters; Loom answers 400 instead."""
    for operations in spec["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
