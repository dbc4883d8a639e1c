"""One engine request and its streamed deltas, as they cross between the engine client and a
worker (msgpack frames: orchestrator/protocol/wire.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenRequest:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None
    top_p: float = 1.0
    trace: dict = field(default_factory=dict)  # W3C carrier of the caller's span
    ignore_eos: bool = False  # the worker's start-up profile decodes a fixed number of tokens
    kv_params: dict | None = None  # vLLM kv_transfer_params: hold blocks for a peer, or pull from one
    quiet: bool = False  # the caller needs only the first tokens and the end (stream_batch.held)


def request_id(job_id: str, node_id: int, prompt_tokens: int, attempt: int = 0) -> str:
    """The engine request a DAG node's ``attempt`` runs as (a worker's request log is keyed by it)."""
    retry = f"-r{attempt}" if attempt else ""
    return f"{job_id}-n{node_id}-{prompt_tokens}{retry}"


@dataclass
class GenChunk:
    request_id: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort
    stop_reason: str | None = None  # the stop string that ended the request (None: EOS, length, abort)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float = 0.0  # engine-side wall clock, seconds
    finished_at: float = 0.0
    kv_params: dict | None = None  # the finished request's kv_transfer_params (a hold, a pull's report)
