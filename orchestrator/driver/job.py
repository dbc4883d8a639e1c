"""Drives one job: main segment -> fork -> threads -> join -> continue, until the answer.

Control flow only, in plain async Python: the engines and the budget are injected
(``EngineClient``, ``BudgetClient``: orchestrator/engine_client.py), so this file knows
nothing of Ray or vLLM and its fork/join logic is unit-tested with scripted fakes.

Everything is token ids: a thread's prompt is the context's ids plus its header's ids (so
the engine's prefix cache serves the shared prefix), and the join is the context's ids
plus each thread's header and generated ids in plan order, which is exactly the token
stream the model would have written sequentially. A segment that stops on the format's
fork stop is parsed for a plan; nested blocks recurse (formats with nesting).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

from orchestrator.budget.lease import BudgetExhausted
from orchestrator.budget.ops import BudgetClient
from orchestrator.budget.policy import Admission, JobBudget
from orchestrator.driver.records import JobRecord, JobRequest, RequestError
from orchestrator.plan.dag import Node, ThreadDAG
from orchestrator.plan.formats import Outline, Plan, PlanFormat, ThreadResult, get_format
from orchestrator.protocol.segment import Decode, EngineClient, Progress, Sampling
from orchestrator.telemetry import tracing
from orchestrator.telemetry.metrics import LoomMetrics


@dataclass
class Lane:
    """A sequence of segments: the main thread, or one thread (which may fork again)."""

    ids: list[int]
    depth: int
    last: int  # the DAG node the next segment comes after
    stops: list[str]
    cap: int  # tokens this lane may still generate
    is_thread: bool = False
    start: int = 0  # where the lane's own text begins in ids (a thread: after its header)
    inline_block: bool = False  # the lane writes a block itself (its fork refused, or its plan malformed)


@dataclass
class ThreadOutcome:
    """One thread of a block, as the join needs it."""

    outline: Outline
    header: list[int]  # the header's ids (what the thread's prompt added to the context)
    ids: list[int]  # what the thread generated after its header
    finish: str


@dataclass
class JobContext:
    record: JobRecord
    request: JobRequest
    fmt: PlanFormat
    budget: JobBudget
    dag: ThreadDAG = field(default_factory=ThreadDAG)
    emit: Callable[[str], None] | None = None
    prompt_len: int = 0
    main_ids: list[int] = field(default_factory=list)


class JobRunner:
    """Runs jobs against an engine client and a budget client."""

    def __init__(self, engine: EngineClient, budget: BudgetClient, tokenizer, max_model_len: int,
                 default_budget: JobBudget | None = None, model_name: str = "loom", metrics=None):
        self.engine = engine
        self.budget = budget
        self.tok = tokenizer
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.metrics = metrics or LoomMetrics()
        self.default_budget = default_budget or JobBudget()

    # -- entry ------------------------------------------------------------------
    async def run(self, record: JobRecord, emit: Callable[[str], None] | None = None) -> JobRecord:
        """Run a job; its span's parent is the current context (the HTTP caller's, see api.py)."""
        with tracing.span("loom.job", loom__job__id=record.id, gen_ai__operation__name="chat",
                          gen_ai__request__model=self.model_name) as span:
            await self._run(record, emit)
            self.metrics.job_done(record.status, record.started - record.created)
            tracing.set_attrs(span, loom__job__status=record.status,
                              gen_ai__usage__output_tokens=record.result.get("total_tokens"),
                              loom__critical_path_tokens=record.result.get("critical_path_tokens"))
        return record

    async def _run(self, record: JobRecord, emit) -> JobRecord:
        req = JobRequest(**record.request)
        ctx = JobContext(record, req, get_format(req.format),
                         JobBudget.from_dict(req.budget, self.default_budget), emit=emit)
        await self.budget.open_job(record.id, ctx.budget)
        try:
            ids = await asyncio.to_thread(self.prepare, req)
            ctx.prompt_len, ctx.main_ids = len(ids), ids
            main = Lane(ids, 0, -1, self._stops(ctx, thread=False), ctx.budget.max_total_tokens)
            ids, finish = await self.run_lane(ctx, main)
            self._finish(ctx, finish)
        except BudgetExhausted as e:
            record.notes.append(str(e))
            self.metrics.rejected("exhausted")
            self._finish(ctx, "budget")
        except Exception as e:  # noqa: BLE001 - a worker or engine failure: the job says so, never vanishes
            record.status, record.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            record.usage = await self.budget.close_job(record.id)
            record.dag = ctx.dag.to_dict()
            record.finished = time.time()
        return record

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
        ids = self.tok.encode(self.prompt_text(req), add_special_tokens=True)
        if len(ids) >= self.max_model_len:
            raise RequestError(f"the prompt is {len(ids)} tokens; this model's context is {self.max_model_len} "
                               f"tokens (max_model_len), which leaves no room to generate")
        return ids

    def _stops(self, ctx: JobContext, thread: bool) -> list[str]:
        fmt = ctx.fmt
        forks = ctx.request.mode == "parallel" and (fmt.nesting or not thread)
        stops = [fmt.fork_stop] if forks else []
        if thread and fmt.thread_close:
            stops.append(fmt.thread_close)
        return stops if thread else stops + ctx.request.stop

    def _finish(self, ctx: JobContext, finish: str) -> None:
        rec = ctx.record
        ids = _no_eos(ctx.main_ids[ctx.prompt_len:], self.tok.eos_token_id)
        text = self.tok.decode(ids, skip_special_tokens=False)
        if finish == "stop":  # the main lane ends on a stop only at one of the caller's: not returned
            text = text[:max(text.rfind(s) for s in ctx.request.stop)]
        rec.result = {"text": text, "answer": extract_answer(text), "finish": finish, "prompt_tokens": ctx.prompt_len,
                      "total_tokens": ctx.dag.total_tokens(),
                      "critical_path_tokens": ctx.dag.critical_path_tokens()}
        rec.status = "done" if finish in ("stop", "eos", "length") else "cancelled"

    # -- lanes ------------------------------------------------------------------
    async def run_lane(self, ctx: JobContext, lane: Lane, first: Node | None = None) -> tuple[list[int], str]:
        """Decode segments of a lane, forking at each complete plan, until it ends.
        A thread's lane decodes its first segment on the thread's own node."""
        node = first
        while True:
            if node is None:
                node = ctx.dag.add("segment", [lane.last] if lane.last >= 0 else [],
                                   label="thread" if lane.is_thread else "main", depth=lane.depth)
            room = self.max_model_len - len(lane.ids)
            if room <= 0 or lane.cap <= 0:
                return lane.ids, "length"
            with tracing.span("loom.segment", loom__node=node.id, loom__depth=lane.depth) if first is not node \
                    else nullcontext():
                out, finish, stop = await self.decode(ctx, node, lane, min(lane.cap, room))
            lane.ids, lane.last, lane.cap = lane.ids + out, node.id, lane.cap - len(out)
            if not lane.is_thread:
                ctx.main_ids = lane.ids
            if finish == "stop" and stop == ctx.fmt.fork_stop:
                plan = self._plan(ctx, self.tok.decode(lane.ids, skip_special_tokens=False))
                forked = plan is not None and await self.fork(ctx, lane, node, plan)
                lane.inline_block = lane.inline_block or not forked
            elif not (finish == "stop" and self._inside_own_block(ctx, lane)):
                return lane.ids, finish  # the end, or the lane's other stop
            node = None  # the lane goes on: after the join, sequentially, or past a nested path's closer

    def _inside_own_block(self, ctx: JobContext, lane: Lane) -> bool:
        """A thread stopped at a closer that belongs to a block it writes itself (a nested fork
        refused or malformed): that closer ends one of the block's paths, not the thread."""
        if not (lane.is_thread and lane.inline_block):
            return False
        return ctx.fmt.open_blocks(self.tok.decode(lane.ids[lane.start:], skip_special_tokens=False)) > 0

    def _plan(self, ctx: JobContext, text: str) -> Plan | None:
        plan = ctx.fmt.find_plan(text)
        if plan is None or not plan.outlines:
            ctx.record.notes.append("plan closed with no outlines: sequential fallback")
            return None
        ctx.record.notes.extend(plan.repairs)
        return plan

    # -- fork / join --------------------------------------------------------------
    async def fork(self, ctx: JobContext, lane: Lane, node: Node, plan: Plan) -> bool:
        """Run the plan's threads and join them into the lane; False when the fork is refused."""
        depth = lane.depth + 1
        adm = await self.budget.admit_fork(ctx.record.id, len(plan.outlines), depth)
        if not adm.admitted:
            ctx.record.notes.append(f"fork of {len(plan.outlines)} refused ({adm.reason}): sequential")
            self.metrics.rejected(adm.reason)
            return False
        self.metrics.forked(adm.width)
        if adm.reason:
            ctx.record.notes.append(adm.reason)
        threads, join = ctx.dag.fork(node.id, [o.id for o in plan.outlines], depth)
        with tracing.span("loom.block", loom__block__threads=len(threads), loom__block__width=adm.width,
                          loom__depth=depth, loom__format=ctx.fmt.name):
            results = await self.run_waves(ctx, lane, plan, threads, adm)
        before = len(lane.ids)
        lane.ids = self.join_ids(ctx, lane.ids, plan, results)
        lane.last = join.id
        join.status = "done"
        if not lane.is_thread:
            ctx.main_ids = lane.ids
            self._emit(ctx, self.tok.decode(lane.ids[before:], skip_special_tokens=False))
        return True

    async def run_waves(self, ctx, lane: Lane, plan: Plan, threads: list[Node], adm: Admission) -> list[ThreadOutcome]:
        results: list[ThreadOutcome] = []
        pairs = list(zip(plan.outlines, threads))
        for i in range(0, len(pairs), adm.width):
            wave = pairs[i:i + adm.width]
            await self.budget.start_threads(ctx.record.id, len(wave))
            self.metrics.threads_started(len(wave))
            results += await gather_or_cancel([self.run_thread(ctx, lane, o, n, adm) for o, n in wave])
        return results

    async def run_thread(self, ctx: JobContext, lane: Lane, outline: Outline, node: Node,
                         adm: Admission) -> ThreadOutcome:
        fmt = ctx.fmt
        header = self.tok.encode(fmt.thread_header(outline), add_special_tokens=fmt.join_mode == "rewrite")
        base = header if fmt.join_mode == "rewrite" else lane.ids + header
        sub = Lane(base, node.depth, -1, self._stops(ctx, thread=True), adm.thread_max_tokens, is_thread=True,
                   start=len(base))
        try:
            with tracing.span("loom.thread", loom__thread__index=outline.id, loom__node=node.id,
                              loom__depth=node.depth):
                ids, finish = await self.run_lane(ctx, sub, first=node)
        finally:
            await self.budget.end_thread(ctx.record.id)
        return ThreadOutcome(outline, header, ids[len(base):], finish)

    def join_ids(self, ctx: JobContext, ids: list[int], plan: Plan, results: list[ThreadOutcome]) -> list[int]:
        fmt = ctx.fmt
        if fmt.join_mode == "rewrite":
            text = self.tok.decode(ids, skip_special_tokens=False)
            res = [ThreadResult(r.outline, self._text(r.ids), r.finish) for r in results]
            return self.tok.encode(fmt.render_join(text, plan, res), add_special_tokens=False)
        out = list(ids)
        for r in results:
            out += r.header + self._closed(ctx, r.ids)
        return out

    def _closed(self, ctx: JobContext, thread_ids: list[int]) -> list[int]:
        """The thread's ids, cut at a tag it may not hold and ending with the closer."""
        fmt = ctx.fmt
        text = self.tok.decode(thread_ids, skip_special_tokens=False)
        if text.endswith(fmt.thread_close):
            body = text[:-len(fmt.thread_close)]
            cleaned, notes = fmt.clean_thread(body)
            if not notes:
                return thread_ids
        else:
            cleaned, notes = fmt.clean_thread(text)
            notes = notes + (f"thread ended without '{fmt.thread_close}': closed",)
        ctx.record.notes.extend(notes)
        eos = self.tok.eos_token or ""
        cleaned = cleaned[:-len(eos)] if eos and cleaned.endswith(eos) else cleaned
        return self.tok.encode(cleaned + fmt.thread_close, add_special_tokens=False)

    # -- one segment on the engines ------------------------------------------------------
    async def decode(self, ctx: JobContext, node: Node, lane: Lane,
                     max_tokens: int) -> tuple[list[int], str, str | None]:
        """(generated ids, finish, the stop string that ended it); the node records the request."""
        req = ctx.request
        streamed = ctx.emit is not None and not lane.is_thread  # nobody listening: no decoding per chunk
        show = (lambda ids: self._emit(ctx, self._text(ids))) if streamed else None
        call = Decode(ctx.record.id, node.id, lane.ids, max_tokens, lane.stops,
                      Sampling(req.temperature, req.top_p, req.seed), on_tokens=show)
        progress = Progress()
        node.status, node.prompt_tokens = "running", len(lane.ids)
        try:
            out = await self.engine.decode(call, progress)
        except BaseException as e:
            node.status = "cancelled" if isinstance(e, asyncio.CancelledError | BudgetExhausted) else "failed"
            node.finish = "budget" if isinstance(e, BudgetExhausted) else node.status
            raise
        finally:
            _record(node, progress)
        node.status, node.finish = "done", out.finish
        return out.token_ids, out.finish, out.stop_reason

    def _text(self, ids: list[int]) -> str:
        """Streamed text, decoded from ids like the final text (vLLM's delta text omits stop strings)."""
        return self.tok.decode(_no_eos(ids, self.tok.eos_token_id), skip_special_tokens=False)

    @staticmethod
    def _emit(ctx: JobContext, text: str) -> None:
        if ctx.emit is not None and text:
            ctx.emit(text)


def _record(node: Node, progress: Progress) -> None:
    """What the engine client saw of a request, on its DAG node."""
    node.tokens, node.cached_tokens = progress.tokens, progress.cached_tokens
    node.started, node.first_token, node.ended = progress.started, progress.first_token, progress.ended
    if progress.placement is not None:
        node.worker = progress.placement.worker
        node.placement = {"held_tokens": progress.placement.held_tokens, "reason": progress.placement.reason,
                          "costs": dict(progress.placement.costs), "held": dict(progress.placement.held),
                          "by": progress.placement.by, "attempts": list(progress.attempts),
                          "source": progress.placement.source, "pull_costs": dict(progress.placement.pull_costs),
                          "prefix": asdict(progress.prefix) if progress.prefix else None}


def _no_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[:-1] if ids and ids[-1] == eos else ids


async def gather_or_cancel(coros: list) -> list:
    """Run concurrently; if one fails, cancel the others (their engine requests are aborted)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def extract_answer(text: str) -> str:
    """The text after the reasoning: after the last </think> (any case), else all of it."""
    for close in ("</think>", "</Think>"):
        if close in text:
            text = text.rsplit(close, 1)[1]
            break
    for eos in ("</s>", "<|endoftext|>", "<|im_end|>"):
        text = text.replace(eos, "")
    return text.strip()
