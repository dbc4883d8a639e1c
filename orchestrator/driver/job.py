"""Drives one job: main segment -> fork -> threads -> join -> continue, until the answer.

Control flow only, in plain async Python: the engines and the budget are injected
(``protocol.segment.EngineClient``, ``budget.ops.BudgetOps``), so the driver knows nothing of
Ray or vLLM and its fork/join logic is unit-tested with a scripted model. Everything is token
ids; lanes.py runs the segments, forks and threads, join.py builds each thread's prompt and the
join.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from orchestrator.budget.lease import BudgetExhausted
from orchestrator.budget.ops import BudgetOps
from orchestrator.budget.policy import JobBudget
from orchestrator.driver.context import JobContext, Lane
from orchestrator.driver.lanes import LaneRunner
from orchestrator.driver.records import JobRecord, JobRequest, JobStatus, RequestError
from orchestrator.plan import detect
from orchestrator.plan.published import get_format
from orchestrator.protocol.fork import ForkPolicy
from orchestrator.protocol.segment import EngineClient, Finish
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import LoomMetrics

NORMAL_ENDS = (Finish.STOP, Finish.EOS, Finish.LENGTH)


class JobRunner:
    """Runs jobs against an engine client and the budget."""

    def __init__(self, engine: EngineClient, budget: BudgetOps, tokenizer, max_model_len: int,
                 default_budget: JobBudget | None = None, model_name: str = "loom", metrics=None,
                 default_format: str = "threadweaver", fork_policy: ForkPolicy = ForkPolicy.ADAPTIVE):
        self.budget = budget
        self.fork_policy = fork_policy
        self.default_format = default_format
        self.added = set(tokenizer.get_added_vocab()) if tokenizer is not None else set()
        self.tok = tokenizer
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.metrics = metrics or LoomMetrics()
        self.default_budget = default_budget or JobBudget()
        self.lanes = LaneRunner(engine, budget, tokenizer, max_model_len, self.metrics)

    async def run(self, record: JobRecord, emit: Callable[[str], None] | None = None) -> JobRecord:
        """Runs a job; its span's parent is the current context (the HTTP caller's, see api.py)."""
        with tracing.span("loom.job", loom__job__id=record.id, gen_ai__operation__name="chat",
                          gen_ai__request__model=self.model_name) as span:
            await self._run(record, emit)
            self.metrics.job_done(record.status, record.started - record.created)
            tracing.set_attrs(span, loom__job__status=record.status,
                              gen_ai__usage__output_tokens=record.result.get("total_tokens"),
                              loom__critical_path_tokens=record.result.get("critical_path_tokens"))
        return record

    async def _run(self, record: JobRecord, emit) -> JobRecord:
        req = self.complete(JobRequest.from_dict(record.request))
        ctx = JobContext(record, req, get_format(req.format), JobBudget.from_dict(req.budget, self.default_budget),
                         emit=emit)
        await self.budget.open_job(record.id, ctx.budget)
        try:
            ids = await asyncio.to_thread(self.prepare, req)
            ctx.prompt_len = len(ids)
            ctx.main = Lane(ids, 0, -1, self.lanes.stops(ctx, thread=False), ctx.budget.max_total_tokens)
            _, finish = await self.lanes.run_lane(ctx, ctx.main)
            self._write_result(ctx, finish)
        except BudgetExhausted as e:
            ctx.note(str(e))
            self.metrics.rejected("exhausted")
            self._write_result(ctx, Finish.BUDGET)
        except Exception as e:  # noqa: BLE001 - a worker or engine failure: the job says so, never vanishes
            record.status, record.error = JobStatus.FAILED, f"{type(e).__name__}: {e}"
        finally:
            record.usage = (await self.budget.close_job(record.id)).to_dict()
            record.dag = ctx.dag.to_dict()
            record.finished = time.time()
        return record

    def complete(self, req: JobRequest) -> JobRequest:
        """The request with its format (the one it asks for, if this model fits it, else the
        served model's; a RequestError naming why a format does not fit) and its fork policy (the
        one it asks for, else the server's)."""
        name = req.format or self.default_format
        try:
            detect.check(name, self.added, self.model_name)
        except detect.FormatError as e:
            raise RequestError(f"format: {e}") from None
        return replace(req, format=name, fork_policy=req.fork_policy or self.fork_policy)

    def prompt_text(self, req: JobRequest) -> str:
        """The prompt as the model sees it: ``prompt`` verbatim, ``messages`` through the chat template."""
        if req.messages is None:
            return req.prompt
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in req.messages) + "\n"

    def prepare(self, req: JobRequest) -> list[int]:
        """The prompt's token ids; a RequestError when the model's context has no room left to
        generate (blocking: callers on an event loop run it in a thread)."""
        ids = self.lanes.joiner.context_ids(get_format(req.format or self.default_format), self.prompt_text(req))
        if len(ids) >= self.max_model_len:
            raise RequestError(f"the prompt is {len(ids)} tokens; this model's context is {self.max_model_len} "
                               f"tokens (max_model_len), which leaves no room to generate")
        return ids

    async def drain(self) -> None:
        """Returns once the budget calls sent so far have landed (jobs' ends free their threads)."""
        await self.budget.drain()

    def _write_result(self, ctx: JobContext, finish: Finish) -> None:
        rec = ctx.record
        text = self.lanes.joiner.visible(ctx.main.ids[ctx.prompt_len:])
        if finish == Finish.STOP:  # the main lane ends on a stop only at one of the caller's: not returned
            text = text[:max(text.rfind(s) for s in ctx.request.stop)]
        rec.result = {"text": text, "answer": extract_answer(text), "finish": finish, "prompt_tokens": ctx.prompt_len,
                      "total_tokens": ctx.dag.total_tokens(), "critical_path_tokens": ctx.dag.critical_path_tokens()}
        rec.status = JobStatus.DONE if finish in NORMAL_ENDS else JobStatus.CANCELLED


def extract_answer(text: str) -> str:
    """The text after the reasoning: after the last </think> (any case), else all of it."""
    for close in ("</think>", "</Think>"):
        if close in text:
            text = text.rsplit(close, 1)[1]
            break
    for eos in ("</s>", "<|endoftext|>", "<|im_end|>"):
        text = text.replace(eos, "")
    return text.strip()
