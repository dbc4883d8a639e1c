"""A lane's segments, its forks and their threads: the fork/join control flow.

A lane decodes segments until it ends. A segment that stops on the format's fork trigger is
parsed for a plan; an admitted fork runs one thread per outline (in waves of the admitted width),
each a lane of its own that may fork again where the format nests, and their join becomes the
lane's context. A refused fork, or a plan with no outlines, lets the model go on and write its
threads itself (noted in the record).
"""
from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext

from orchestrator.budget.lease import BudgetExhausted, TokenLease
from orchestrator.budget.ops import BudgetOps
from orchestrator.budget.policy import Admission
from orchestrator.driver.context import JobContext, Lane, ThreadOutcome
from orchestrator.driver.join import Joined, Joiner
from orchestrator.driver.records import Mode
from orchestrator.plan.dag import ForkRecord, Node, NodeKind, NodeStatus
from orchestrator.plan.formats import Outline, Plan
from orchestrator.protocol.fork import ForkQuery
from orchestrator.protocol.segment import EngineClient, Finish, Progress, Sampling, SegmentRequest, SegmentResult
from orchestrator.telemetry import tracing


class LaneRunner:
    def __init__(self, engine: EngineClient, budget: BudgetOps, tokenizer, max_model_len: int, metrics):
        self.engine = engine
        self.budget = budget
        self.joiner = Joiner(tokenizer)
        self.max_model_len = max_model_len
        self.metrics = metrics

    def stops(self, ctx: JobContext, thread: bool) -> list[str]:
        """A lane's stop strings: the fork trigger where it may fork, a thread's closer, and (the
        main lane) the caller's."""
        fmt = ctx.fmt
        forks = ctx.request.mode == Mode.PARALLEL and (fmt.nesting or not thread)
        stops = [fmt.fork_stop] if forks else []
        if thread and fmt.thread_close:
            stops.append(fmt.thread_close)
        if fmt.stop_guard:
            stops.append(fmt.stop_guard[0])
        return stops if thread else stops + ctx.request.stop

    # -- lanes
    async def run_lane(self, ctx: JobContext, lane: Lane, first: Node | None = None) -> tuple[list[int], Finish]:
        """Segments of a lane, forking at each complete plan, until it ends. A thread's lane
        decodes its first segment on the thread's own node."""
        node = first
        while True:
            if node is None:
                node = ctx.dag.add(NodeKind.SEGMENT, [lane.last] if lane.last >= 0 else [],
                                   label="thread" if lane.is_thread else "main", depth=lane.depth)
            room = self.max_model_len - len(lane.ids)
            if room <= 0 or lane.cap <= 0:
                return lane.ids, Finish.LENGTH
            with tracing.span("loom.segment", loom__node=node.id, loom__depth=lane.depth) if first is not node \
                    else nullcontext():
                out = await self.segment(ctx, node, lane, min(lane.cap, room))
            self._extend(lane, node, out.token_ids)
            end = await self._after(ctx, lane, node, out)
            if end is not None:
                return lane.ids, end
            node = None  # the lane goes on: after the join, sequentially, past a guard or a nested path's closer

    async def _after(self, ctx: JobContext, lane: Lane, node: Node, out: SegmentResult) -> Finish | None:
        """What a segment's end means for its lane: a fork (then the lane goes on, unless the join
        ended the generation), a guard replaced, a closer inside the lane's own block, or the end."""
        fmt, stop = ctx.fmt, out.stop_reason if out.finish == Finish.STOP else None
        if stop is not None and stop == fmt.fork_stop:
            plan = self._plan(ctx, self.joiner.text(lane.ids))
            joined = await self.fork(ctx, lane, node, plan) if plan is not None else None
            lane.inline_block = lane.inline_block or joined is None
            return joined.end if joined is not None else None
        if stop is not None and fmt.stop_guard and stop == fmt.stop_guard[0]:
            ctx.note(f"'{stop}' written by the model: replaced by '{fmt.stop_guard[1]}', as {fmt.name}'s controller")
            lane.ids = self.joiner.guarded(fmt, lane.ids)
            return None
        if stop is not None and self._inside_own_block(ctx, lane):
            return None
        return out.finish  # the end, or the lane's other stop

    @staticmethod
    def _extend(lane: Lane, node: Node, out: list[int]) -> None:
        lane.ids, lane.last, lane.cap = lane.ids + out, node.id, lane.cap - len(out)

    def _inside_own_block(self, ctx: JobContext, lane: Lane) -> bool:
        """A thread stopped at a closer that belongs to a block it writes itself (a nested fork
        refused or malformed): that closer ends one of the block's paths, not the thread."""
        if not (lane.is_thread and lane.inline_block):
            return False
        return ctx.fmt.open_blocks(self.joiner.text(lane.ids[lane.start:])) > 0

    @staticmethod
    def _plan(ctx: JobContext, text: str) -> Plan | None:
        plan = ctx.fmt.find_plan(text)
        if plan is not None:
            ctx.note(*plan.notes)
        if plan is None or not plan.outlines:
            ctx.note("plan closed with no numbered outline: no fork, the model goes on")
            return None
        return plan

    # -- fork / join
    async def fork(self, ctx: JobContext, lane: Lane, node: Node, plan: Plan) -> Joined | None:
        """Runs the plan's threads and joins them into the lane; None when the fork is refused."""
        depth = lane.depth + 1
        asked_at = time.monotonic()
        adm = await self.admit(ctx, lane, node, plan, depth)
        self.metrics.forked(adm.width, len(plan.outlines), time.monotonic() - asked_at)
        if not adm.admitted:
            ctx.note(f"fork of {len(plan.outlines)} refused ({adm.reason}): sequential")
            self.metrics.rejected(adm.reason)
            return None
        if adm.reason:
            ctx.note(adm.reason)
        threads, join = ctx.dag.fork(node.id, [o.id for o in plan.outlines], depth)
        with tracing.span("loom.block", loom__block__threads=len(threads), loom__block__width=adm.width,
                          loom__depth=depth, loom__format=ctx.fmt.name):
            results = await self.run_waves(ctx, lane, plan, threads, adm)
        before = len(lane.ids)
        joined = self.joiner.join(ctx, lane.ids, plan, results)
        lane.ids, lane.last = joined.ids, join.id
        join.status = NodeStatus.DONE
        if not lane.is_thread:
            ctx.show(self.joiner.text(lane.ids[before:]))
        return joined

    async def admit(self, ctx: JobContext, lane: Lane, node: Node, plan: Plan, depth: int) -> Admission:
        """The fork's width: what the engines' side advises under the job's fork policy
        (``EngineClient.fork_width``), then what the budget admits of it; the node records both."""
        n = len(plan.outlines)
        header, prompt = self.joiner.thread_prompt(ctx.fmt, lane.ids, plan.outlines[0])
        target = ctx.request.latency_target_s
        left = None if target is None else target - (time.time() - ctx.record.created)
        advice = await self.engine.fork_width(ForkQuery(prompt, n, len(header), ctx.request.fork_policy, left))
        if advice.width == 0:
            adm = Admission(0, reason=advice.reason)
        else:
            adm = await self.budget.admit_fork(ctx.record.id, n, depth)
            if adm.admitted and advice.width < adm.width:
                adm = Admission(advice.width, adm.thread_max_tokens, advice.reason)
        node.fork = ForkRecord(n, ctx.request.fork_policy, advice, adm.width, adm.reason)
        return adm

    async def run_waves(self, ctx: JobContext, lane: Lane, plan: Plan, threads: list[Node],
                        adm: Admission) -> list[ThreadOutcome]:
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
        header, base = self.joiner.thread_prompt(ctx.fmt, lane.ids, outline)
        sub = Lane(base, node.depth, -1, self.stops(ctx, thread=True), adm.thread_max_tokens, is_thread=True,
                   start=len(base))
        try:
            with tracing.span("loom.thread", loom__thread__index=outline.id, loom__node=node.id,
                              loom__depth=node.depth):
                ids, finish = await self.run_lane(ctx, sub, first=node)
        finally:
            self.metrics.thread_ended()
            await self.budget.end_thread(ctx.record.id)
        return ThreadOutcome(outline, header, ids[len(base):], finish)

    # -- one segment on the engines
    async def segment(self, ctx: JobContext, node: Node, lane: Lane, max_tokens: int) -> SegmentResult:
        """One segment on the engines, on a token lease of its own; the node records the request."""
        req = ctx.request
        streamed = ctx.emit is not None and not lane.is_thread  # nobody listening: no decoding per chunk
        show = (lambda ids: ctx.show(self.joiner.visible(ids))) if streamed else None
        call = SegmentRequest(ctx.record.id, node.id, lane.ids, max_tokens, lane.stops,
                              Sampling(req.temperature, req.top_p, req.seed), on_tokens=show)
        progress = Progress()
        node.status, node.prompt_tokens = NodeStatus.RUNNING, len(lane.ids)
        first = None if call.streamed else max_tokens  # quiet: one grant of all its tokens
        try:
            async with TokenLease(self.budget, call.job_id, f"n{node.id}", first=first) as lease:
                out = await self.engine.generate(call, lease, progress)
        except BaseException as e:
            node.end(*_failure(e))
            raise
        finally:
            node.record(progress)
        node.end(NodeStatus.DONE, out.finish)
        return out


def _failure(e: BaseException) -> tuple[NodeStatus, Finish]:
    if isinstance(e, BudgetExhausted):
        return NodeStatus.CANCELLED, Finish.BUDGET
    if isinstance(e, asyncio.CancelledError):
        return NodeStatus.CANCELLED, Finish.CANCELLED
    return NodeStatus.FAILED, Finish.FAILED


async def gather_or_cancel(coros: list) -> list:
    """Runs concurrently; if one fails, cancels the others (their engine requests are aborted)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
