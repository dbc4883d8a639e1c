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
from dataclasses import fields
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from orchestrator.budget.policy import LIMITS, BudgetError, JobBudget
from orchestrator.driver.records import JobRequest, RequestError
from orchestrator.plan.published import FORMATS
from orchestrator.protocol.fork import ForkPolicy

MAX_SEED = 2**63 - 1
MAX_STOP = 4  # stop strings per request, as OpenAI's API
MAX_STOP_CHARS = 64
MAX_LATENCY_TARGET_S = 7 * 86_400
MAX_TOKENS = 1_000_000  # max_tokens / max_completion_tokens: also bounded by the budget's limits


def _unicode(text: str) -> str:
    """Refuse lone surrogates (valid in JSON escapes, not encodable as UTF-8 downstream)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return text


def _whole(value: object) -> object:
    """A whole float (``3.0``) as the integer JSON Schema says it is; anything else as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = BeforeValidator(_whole)
Text = Annotated[str, AfterValidator(_unicode)]


def _not_blank(text: str) -> str:
    if not text.strip():  # str.strip and the schema's \S (Python's re: str.isspace) agree on blanks
        raise ValueError("must not be blank")
    return text


Prompt = Annotated[str, AfterValidator(_unicode), AfterValidator(_not_blank),
                   WithJsonSchema({"type": "string", "pattern": r"\S", "description": "Not blank"})]
Format = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
Mode = Literal["parallel", "sequential"]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), Whole]
TokenCap = Annotated[int, Field(ge=1, le=MAX_TOKENS), Whole]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), AfterValidator(_unicode)]
ForkPolicyName = Annotated[Literal[tuple(p.value for p in ForkPolicy)], Field(  # type: ignore[valid-type]
    description="How many of a fork's threads run at once: adaptive (the width whose estimated cost to "
                "this job and to the other requests is least), eager (all, as far as the budget allows) or "
                "never (the model writes its threads itself). Omitted: the server's fork_policy.")]
LatencyTarget = Annotated[float, Field(gt=0.0, le=MAX_LATENCY_TARGET_S, description=(
    "Seconds from submission this job aims to finish within: the adaptive fork policy then picks, of "
    "the widths whose estimated time fits what is left of it, the least costly. A goal, not a limit "
    "(budget.deadline_s stops a job)."))]


def budget_schema() -> dict:
    """The JSON Schema of a budget: each of JobBudget's fields with its bounds (LIMITS)."""
    def field_schema(f) -> dict:
        lo, hi = LIMITS[f.name]
        kind = "integer" if f.type in (int, "int") else "number"
        return {"type": kind, "minimum": lo, "maximum": hi}
    return {"type": "object", "additionalProperties": False,
            "description": "Limits for this job; each field omitted takes the server's default.",
            "properties": {f.name: field_schema(f) for f in fields(JobBudget)}}


# bounds per field: JobBudget (the same check as the config's); documented field by field
Budget = Annotated[dict[str, int | float], WithJsonSchema(budget_schema())]


def _exactly_one(*names: str, kinds: tuple[str, ...]) -> dict:
    """JSON Schema: exactly one of ``names`` given (present and not null)."""
    return {"oneOf": [{"required": [n], "properties": {n: {"type": k}}} for n, k in zip(names, kinds)]}


def _not_both(a: str, b: str) -> dict:
    """JSON Schema: not both of ``a`` and ``b`` given as integers."""
    return {"not": {"required": [a, b], "properties": {a: {"type": "integer"}, b: {"type": "integer"}}}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text
    name: Text | None = None


class JobBody(_Strict):
    """``POST /v1/jobs``: a raw ``prompt`` (completion-style) or ``messages`` (the model's chat
    template renders them)."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("prompt", "messages", kinds=("string", "array")))

    prompt: Prompt | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    format: Format | None = None  # None: the model's own (cluster/runtime.py resolves it)
    mode: Mode = "parallel"
    budget: Budget = Field(default_factory=dict)
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: list[StopText] = Field(default_factory=list, max_length=MAX_STOP)
    fork_policy: ForkPolicyName | None = None
    latency_target_s: LatencyTarget | None = None

    def to_request(self) -> JobRequest:
        if (self.prompt is None) == (self.messages is None):
            raise RequestError("give exactly one of 'prompt' or 'messages'")
        _check_budget(self.budget, "budget")
        messages = None if self.messages is None else [m.model_dump(exclude_none=True) for m in self.messages]
        policy = None if self.fork_policy is None else ForkPolicy(self.fork_policy)
        return JobRequest(prompt=self.prompt, messages=messages, format=self.format, mode=self.mode,
                          budget=dict(self.budget), temperature=self.temperature, top_p=self.top_p,
                          seed=self.seed, stop=list(self.stop), fork_policy=policy,
                          latency_target_s=self.latency_target_s)


class StreamOptions(_Strict):
    include_usage: bool = False


class LoomOptions(_Strict):
    format: Format | None = None
    mode: Mode = "parallel"
    budget: Budget = Field(default_factory=dict)
    fork_policy: ForkPolicyName | None = None
    latency_target_s: LatencyTarget | None = None


class ChatBody(_Strict):
    """``POST /v1/chat/completions``: OpenAI's fields that mean something here, plus ``loom``.
    ``max_tokens`` (or ``max_completion_tokens``, not both) caps the job's total generated tokens."""

    model_config = ConfigDict(json_schema_extra=_not_both("max_tokens", "max_completion_tokens"))

    messages: list[Message] = Field(min_length=1)
    model: Text | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None = None
    max_tokens: TokenCap | None = None
    max_completion_tokens: TokenCap | None = None
    n: Annotated[Literal[1], Whole] = 1
    user: Text | None = None
    loom: LoomOptions = Field(default_factory=LoomOptions)

    def to_request(self) -> JobRequest:
        if None not in (self.max_tokens, self.max_completion_tokens):
            raise RequestError("give one of 'max_tokens' and 'max_completion_tokens', not both")
        budget = dict(self.loom.budget)
        cap = self.max_completion_tokens or self.max_tokens
        if cap is not None:
            budget["max_total_tokens"] = cap
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return _validated(JobBody, {
            "messages": [m.model_dump(exclude_none=True) for m in self.messages],
            "format": self.loom.format, "mode": self.loom.mode, "budget": budget,
            "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": stop,
            "fork_policy": self.loom.fork_policy, "latency_target_s": self.loom.latency_target_s,
        }).to_request()  # a JobBody's own check failing here would be a gap in ChatBody's: still a 400


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
