"""The data that crosses boundaries: a job's request and its record (msgpack-encoded)."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields

import msgpack

from orchestrator.budget import BudgetError, JobBudget
from orchestrator.plan.formats import FORMATS

SCHEMA_VERSION = 1
STATUSES = ("queued", "running", "done", "failed", "cancelled")
MODES = ("parallel", "sequential")


class RequestError(ValueError):
    """Bad input from a user: the API answers 4xx with this message."""


@dataclass
class JobRequest:
    prompt: str | None = None
    messages: list[dict] | None = None
    format: str = "threadweaver"
    mode: str = "parallel"  # sequential: the model writes its threads itself, no fork
    budget: dict = field(default_factory=dict)
    temperature: float = 0.0
    seed: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> JobRequest:
        if not isinstance(d, dict):
            raise RequestError("request body must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RequestError(f"unknown field(s): {', '.join(sorted(unknown))}")
        req = cls(**d)
        req.validate()
        return req

    def validate(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise RequestError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt.strip()):
            raise RequestError("'prompt' must be a non-empty string")
        if self.messages is not None:
            _check_messages(self.messages)
        if self.format not in FORMATS:
            raise RequestError(f"unknown format {self.format!r}; known: {', '.join(FORMATS)}")
        if self.mode not in MODES:
            raise RequestError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 2:
            raise RequestError("'temperature' must be a number in [0, 2]")
        if not isinstance(self.budget, dict):
            raise RequestError("'budget' must be an object")
        try:
            JobBudget.from_dict(self.budget)
        except BudgetError as e:
            raise RequestError(str(e)) from None


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or \
                m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}] needs a role (system|user|assistant) and string content")


@dataclass
class JobRecord:
    id: str
    request: dict
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    dag: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # repairs, fallbacks, budget decisions
    error: str = ""
    version: int = SCHEMA_VERSION

    @classmethod
    def new(cls, request: JobRequest) -> JobRecord:
        return cls(id="job-" + uuid.uuid4().hex[:16], request=asdict(request))

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> JobRecord:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"job record schema {d.get('version')} is not {SCHEMA_VERSION}")
        return cls(**d)

    def to_json(self) -> dict:
        return asdict(self)
