"""A simulated engine's scheduler: vLLM's continuous batching over a BlockCache, step by step.

Each step takes waiting requests in arrival order while fewer than ``max_num_seqs`` run and
their prompts' blocks fit (after the prefix cache's hits); then gives every running request
past its prefill one decode token and the others prefill chunks from the step's token budget,
in arrival order. A request that finds no block for its next tokens preempts the request that
started last (its blocks go back; it waits again at the head of the queue and recomputes).
After the step, each request whose tokens are all computed samples its next token from its
script, and ends on EOS (unless ignored), then a stop, then its length, in vLLM's order.
Pure Python, no clock: the engine (engine.py) sleeps each step's ``seconds``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from workers.sim.block_cache import BlockCache, BlockTable
from workers.sim.profile import StepProfile


class Finish(StrEnum):
    STOP = "stop"  # EOS, or a stop (``stop_reason`` says which)
    LENGTH = "length"
    ABORT = "abort"


@dataclass(eq=False)  # one request is itself only
class SimRequest:
    id: str
    prompt: list[int]
    script: list[int]  # what the model writes after the prompt (then ``filler``)
    filler: int
    max_tokens: int
    stops: dict[tuple[int, ...], str]  # token ids of each stop -> the stop string
    eos: int | None  # None: EOS ignored
    tokens: list[int] = field(default_factory=list)  # prompt, then generated
    computed: int = 0  # tokens whose KV is computed
    cached: int = 0  # prompt tokens found in the prefix cache when it started
    started: bool = False  # has been scheduled once (cached is known)
    table: BlockTable = field(default_factory=BlockTable)

    def __post_init__(self):
        self.tokens = list(self.prompt)

    @property
    def generated(self) -> int:
        return len(self.tokens) - len(self.prompt)

    def next_token(self) -> int:
        i = self.generated
        return self.script[i] if i < len(self.script) else self.filler


@dataclass(frozen=True)
class Output:
    request: SimRequest
    token_ids: list[int]
    finish: Finish | None = None
    stop_reason: str | None = None


@dataclass
class StepPlan:
    work: dict[str, int]  # request id -> tokens computed this step
    decoding: int  # requests past their prefill, one token each
    prefilled: int  # prompt tokens computed
    seconds: float


class Scheduler:
    def __init__(self, cache: BlockCache, profile: StepProfile, max_num_seqs: int, max_model_len: int):
        self.cache, self.profile = cache, profile
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.preemptions = 0

    def add(self, req: SimRequest) -> None:
        if len(req.prompt) >= self.max_model_len:
            raise ValueError(f"prompt of {len(req.prompt)} tokens does not fit max_model_len {self.max_model_len}")
        if self._blocks(len(req.prompt)) > self.cache.num_blocks:
            raise ValueError(f"prompt of {len(req.prompt)} tokens needs more KV blocks than the engine has")
        self.waiting.append(req)

    def abort(self, request_id: str) -> SimRequest | None:
        for queue in (self.running, self.waiting):
            for req in queue:
                if req.id == request_id:
                    queue.remove(req)
                    self.cache.release(req.table)
                    return req
        return None

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def schedule(self) -> StepPlan:
        self._admit()
        budget, work = self.profile.max_batched_tokens, {}
        for req in sorted(self.running, key=lambda r: len(r.tokens) - r.computed > 1):  # decodes first
            if budget <= 0:
                break
            n = min(len(req.tokens) - req.computed, budget)
            if req in self.running and self._blocks_for(req, req.computed + n):  # (not preempted)
                work[req.id] = n
                budget -= n
        scheduled = [r for r in self.running if r.id in work]
        decoding = sum(1 for r in scheduled if r.generated and work[r.id] == 1)
        prefilled = sum(work[r.id] for r in scheduled) - decoding
        return StepPlan({r.id: work[r.id] for r in scheduled}, decoding, prefilled,
                        self.profile.step_s(decoding, prefilled))

    def complete(self, plan: StepPlan) -> list[Output]:
        """The step ran: its tokens are computed; each request with all its tokens computed
        samples one."""
        outputs = []
        for req in list(self.running):
            n = plan.work.get(req.id)
            if n is None:
                continue
            req.computed += n
            if req.computed == len(req.tokens):
                outputs.append(self._sample(req))
        return outputs

    def load(self) -> dict:
        return {"running": len(self.running), "waiting": len(self.waiting), "kv_usage": self.cache.usage()}

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            bs = self.cache.block_size
            hits = self.cache.hits(req.tokens)[:(len(req.tokens) - 1) // bs]  # one token always computed
            if not self.cache.can_take(hits, self._blocks(len(req.tokens)) - len(hits)):
                return
            self.waiting.popleft()
            self.cache.reference(req.table, hits)
            req.computed = len(hits) * bs
            if not req.started:
                req.cached, req.started = req.computed, True
            self.running.append(req)

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.cache.block_size)

    def _blocks_for(self, req: SimRequest, tokens: int) -> bool:
        """Blocks for ``req``'s first ``tokens`` tokens, preempting the latest started requests
        for them; False when ``req`` itself was preempted."""
        while not self.cache.grow(req.table, req.tokens, tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: SimRequest) -> None:
        self.running.remove(req)
        self.cache.release(req.table)
        req.computed = 0
        self.waiting.appendleft(req)
        self.preemptions += 1

    def _sample(self, req: SimRequest) -> Output:
        token = req.next_token()
        req.tokens.append(token)
        finish, stop = self._finish(req, token)
        if finish is not None:
            self.running.remove(req)
            self.cache.release(req.table)
        return Output(req, [token], finish, stop)

    def _finish(self, req: SimRequest, token: int) -> tuple[Finish | None, str | None]:
        if req.eos is not None and token == req.eos:
            return Finish.STOP, None
        for ids, text in req.stops.items():
            if req.generated >= len(ids) and tuple(req.tokens[-len(ids):]) == ids:
                return Finish.STOP, text
        if req.generated >= req.max_tokens or len(req.tokens) >= self.max_model_len:
            return Finish.LENGTH, None
        return None, None
