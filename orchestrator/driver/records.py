"""The data that crosses boundaries: a job's request and its record (msgpack-encoded)."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum

import msgpack

from orchestrator.protocol.fork import ForkPolicy

SCHEMA_VERSION = 1


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class Mode(StrEnum):
    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"  # the model writes its threads itself: no fork


class RequestError(ValueError):
    """Bad input from a user: the API answers 4xx with this message."""


@dataclass
class JobRequest:
    """A validated request (``service.schema`` builds it from any entry point's input)."""

    prompt: str | None = None
    messages: list[dict] | None = None
    format: str | None = None  # None: the served model's (JobRunner.complete fills it in)
    mode: Mode = Mode.PARALLEL
    budget: dict = field(default_factory=dict)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # the caller's stop strings (main context only)
    fork_policy: ForkPolicy | None = None  # None: the server's (JobRunner.complete fills it in)
    latency_target_s: float | None = None  # seconds from submission the job aims to finish within

    @classmethod
    def from_dict(cls, d: dict) -> JobRequest:
        policy = d.get("fork_policy")
        return cls(**{**d, "mode": Mode(d.get("mode", Mode.PARALLEL)),
                      "fork_policy": None if policy is None else ForkPolicy(policy)})


@dataclass
class JobRecord:
    id: str
    request: dict
    status: JobStatus = JobStatus.QUEUED
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

    def pack(self) -> bytes:
        """Its fields as they are (plain values all the way down): asdict's deep copy of the DAG
        cost the ingress replica more than the packing itself."""
        return msgpack.packb({f.name: getattr(self, f.name) for f in fields(self)}, use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> JobRecord:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"job record schema {d.get('version')} is not {SCHEMA_VERSION}")
        return cls(**{**d, "status": JobStatus(d["status"])})

    def to_json(self) -> dict:
        return asdict(self)
