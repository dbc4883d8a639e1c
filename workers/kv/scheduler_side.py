"""The scheduler half of Loom's KV connector: which tokens a request loads from a peer, which
finished requests keep their blocks for a peer, and what the worker half is told each step.

Plain Python over vLLM's request and block objects (duck-typed: ``kv_transfer_params``,
``prompt_token_ids``, ``request_id``, ``status``; ``KVCacheBlocks``), so it is unit-tested with
stand-ins. ``get_num_new_matched_tokens`` (``matched``) is side-effect free, as vLLM requires.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from orchestrator.protocol.kv import HOLD_KEY, PULL_KEY, HoldRequest, KVHold


@dataclass
class PullSpec:
    """One pull for the worker half: the holder's blocks into the blocks vLLM allocated here."""

    request_id: str
    hold: KVHold
    remote_block_ids: list[int]
    local_block_ids: list[int]


@dataclass
class StepPlan:
    """What the scheduler half tells the worker half for one step."""

    pulls: list[PullSpec] = field(default_factory=list)
    holds: dict[str, float] = field(default_factory=dict)  # request id -> seconds to keep its blocks
    releases: list[KVHold] = field(default_factory=list)  # holds this engine will not pull


@dataclass
class HolderAddress:
    """This engine as a holder: its name and its side channels (one per tensor-parallel rank)."""

    name: str
    host: str
    ports: list[int] = field(default_factory=list)


class SchedulerSide:
    def __init__(self, me: HolderAddress, block_size: int, block_bytes: int, hold_s: float):
        self.me = me
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.hold_s = hold_s
        self.plan = StepPlan()

    def matched(self, request, num_computed: int) -> tuple[int, bool]:
        """Tokens past ``num_computed`` to load from the holder, asynchronously: the held,
        block-aligned tokens, short of the prompt's last token (vLLM computes at least one)."""
        hold = (request.kv_transfer_params or {}).get(PULL_KEY)
        if hold is None:
            return 0, False
        last_full = (len(request.prompt_token_ids) - 1) // self.block_size * self.block_size
        n = min(hold["num_tokens"], last_full) - num_computed
        return (n, True) if n > 0 else (0, False)

    def after_alloc(self, request, blocks, num_external: int) -> None:
        """Blocks are allocated: plan the pull into the fresh ones, or release the hold unused."""
        params = request.kv_transfer_params or {}
        if PULL_KEY not in params:
            return
        hold = KVHold.from_dict(params.pop(PULL_KEY))  # once: a reschedule after the load is a no-op
        if num_external <= 0:
            self.plan.releases.append(hold)
            return
        fresh = blocks.get_unhashed_block_ids()
        skip = len(blocks.get_block_ids()[0]) - len(fresh)  # blocks this engine had cached
        n = num_external // self.block_size
        self.plan.pulls.append(PullSpec(request.request_id, hold, hold.block_ids[skip:skip + n], fresh[:n]))

    def step_plan(self) -> StepPlan:
        plan, self.plan = self.plan, StepPlan()
        return plan

    def finished(self, request, block_ids: list[int], stopped_normally: bool) -> tuple[bool, dict | None]:
        """A holder request keeps its blocks (True) and returns the ``KVHold``; a hold never
        pulled (its target aborted before allocation) is released."""
        params = request.kv_transfer_params or {}
        if PULL_KEY in params:
            self.plan.releases.append(KVHold.from_dict(params.pop(PULL_KEY)))
        ask = HoldRequest.from_params(params)
        if ask is not None and stopped_normally:
            n = min(int(ask.tokens), len(request.prompt_token_ids)) // self.block_size
            n = min(n, len(block_ids))
            if n > 0:
                hold_s = float(ask.hold_s or self.hold_s)
                self.plan.holds[request.request_id] = hold_s
                hold = KVHold(self.me.name, self.me.host, list(self.me.ports), request.request_id, block_ids[:n],
                              n * self.block_size, self.block_bytes, hold_s)
                return True, {HOLD_KEY: asdict(hold)}
        return False, None
