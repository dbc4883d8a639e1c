"""The request bodies Loom accepts, typed and bounded: one validation for every entry point.

``POST /v1/jobs``, the ``loom`` CLI and the Ray Jobs entrypoint all build a ``JobRequest``
through ``JobBody``; ``POST /v1/chat/completions`` validates a ``ChatBody`` and maps it to the
same ``JobRequest``. Validation is strict (no coercion: ``"abc"`` is not a seed, ``true`` is not
a temperature, ``"no"`` is not a boolean), numbers are finite and bounded, strings are valid
Unicode, and unknown fields are refused by name. Every failure raises ``RequestError`` with a
message naming the field, which the API answers with a 400.
"""
from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from orchestrator.budget.policy import BudgetError, JobBudget
from orchestrator.driver.records import JobRequest, RequestError
from orchestrator.plan.published import FORMATS

MAX_SEED = 2**63 - 1
MAX_STOP = 4  # stop strings per request, as OpenAI's API
MAX_STOP_CHARS = 64
MAX_TOKENS = 1_000_000  # max_tokens / max_completion_tokens: also bounded by the budget's limits


def _unicode(text: str) -> str:
    """Refuse lone surrogates (valid in JSON escapes, not encodable as UTF-8 downstream)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
NonEmpty = Annotated[str, Field(min_length=1), AfterValidator(_unicode)]
Format = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
Mode = Literal["parallel", "sequential"]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), AfterValidator(_unicode)]
Budget = dict[str, int | float]  # bounds per field: JobBudget (the same check as the config's)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text
    name: Text | None = None


class JobBody(_Strict):
    """``POST /v1/jobs``: a raw ``prompt`` (completion-style) or ``messages`` (the model's chat
    template renders them)."""

    prompt: Text | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    format: Format | None = None  # None: the model's own (cluster/runtime.py resolves it)
    mode: Mode = "parallel"
    budget: Budget = Field(default_factory=dict)
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: list[StopText] = Field(default_factory=list, max_length=MAX_STOP)

    def to_request(self) -> JobRequest:
        if (self.prompt is None) == (self.messages is None):
            raise RequestError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise RequestError("'prompt' must be a non-empty string")
        _check_budget(self.budget, "budget")
        messages = None if self.messages is None else [m.model_dump(exclude_none=True) for m in self.messages]
        return JobRequest(prompt=self.prompt, messages=messages, format=self.format, mode=self.mode,
                          budget=dict(self.budget), temperature=self.temperature, top_p=self.top_p,
                          seed=self.seed, stop=list(self.stop))


class StreamOptions(_Strict):
    include_usage: bool = False


class LoomOptions(_Strict):
    format: Format | None = None
    mode: Mode = "parallel"
    budget: Budget = Field(default_factory=dict)


class ChatBody(_Strict):
    """``POST /v1/chat/completions``: OpenAI's fields that mean something here, plus ``loom``.
    ``max_tokens`` (or ``max_completion_tokens``) caps the job's total generated tokens."""

    messages: list[Message] = Field(min_length=1)
    model: Text | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: StopText | list[StopText] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    n: Literal[1] = 1
    user: Text | None = None
    loom: LoomOptions = Field(default_factory=LoomOptions)

    def to_request(self) -> JobRequest:
        if None not in (self.max_tokens, self.max_completion_tokens) and \
                self.max_tokens != self.max_completion_tokens:
            raise RequestError("'max_tokens' and 'max_completion_tokens' disagree; give one")
        budget = dict(self.loom.budget)
        cap = self.max_completion_tokens or self.max_tokens
        if cap is not None:
            budget["max_total_tokens"] = cap
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return JobBody.model_validate({
            "messages": [m.model_dump(exclude_none=True) for m in self.messages],
            "format": self.loom.format, "mode": self.loom.mode, "budget": budget,
            "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": stop,
        }).to_request()


def _check_budget(budget: dict, where: str) -> None:
    try:
        JobBudget.from_dict(budget)
    except BudgetError as e:
        raise RequestError(f"{where}: {e}") from None


def job_request(body: object) -> JobRequest:
    """A validated ``JobRequest`` from a decoded JSON body (every entry point's door)."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return _validated(JobBody, body).to_request()


def chat_request(body: object) -> tuple[ChatBody, JobRequest]:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    chat = _validated(ChatBody, body)
    return chat, chat.to_request()


def _validated(model: type[_Strict], body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise RequestError(describe(e)) from None


def describe(error: ValidationError) -> str:
    """One line naming every bad field: unknown ones together, then each other problem."""
    unknown = sorted(_loc(e["loc"]) for e in error.errors() if e["type"] == "extra_forbidden")
    parts = [f"unknown or unsupported field(s): {', '.join(unknown)}"] if unknown else []
    for e in error.errors():
        if e["type"] != "extra_forbidden":
            parts.append(f"'{_loc(e['loc'])}': {e['msg']}")
    return "; ".join(dict.fromkeys(parts))[:2000]


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "constrained-")))


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def decode_json(data: bytes) -> object:
    """Strict JSON: no NaN/Infinity, valid UTF-8, nesting within Python's recursion limit."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise RequestError(f"request body is not valid JSON: {reason}"[:300]) from None
