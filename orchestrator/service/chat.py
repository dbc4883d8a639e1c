"""The OpenAI-compatible chat completion: a job's record as a ``chat.completion`` (the reasoning
apart from the answer), or streamed as ``chat.completion.chunk`` server-sent events."""
from __future__ import annotations

import asyncio
import json
import time

from orchestrator.driver.job import extract_answer
from orchestrator.driver.records import JobStatus
from orchestrator.service.jobs import JobService


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
        "choices": [{"index": 0, "finish_reason": _finish_reason(record),
                     "message": {"role": "assistant", "content": answer, "reasoning": reasoning}}],
        "usage": _usage(record),
        "loom": {"job_id": record.id, "notes": record.notes,
                 "critical_path_tokens": record.result.get("critical_path_tokens", 0)},
    }


def _finish_reason(record) -> str:
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
    if final.status == JobStatus.FAILED:
        yield f"data: {json.dumps({'error': {'message': final.error, 'type': 'server_error'}})}\n\n"
    else:
        reasoning, answer = split_reasoning(final.result.get("text", ""))
        if len(reasoning) > len(split.sent) and reasoning.startswith(split.sent):
            yield sse({"reasoning": reasoning[len(split.sent):]})  # what followed the last streamed piece
        yield sse({"content": answer}, _finish_reason(final))
        if include_usage:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [], "usage": _usage(final)}
            yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
