"""ThreadDAG: the shape of one job's reasoning, as it unfolds.

Nodes are main segments, threads and joins; an edge says "must finish before". A fork adds one
thread node per outline after the node that wrote the plan and one join node after all of them;
a nested block inside a thread does the same under that thread. The critical path (the longest
token-weighted path) is the papers' "token latency".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

from orchestrator.protocol.fork import ForkAdvice, ForkPolicy, WidthEstimate
from orchestrator.protocol.segment import Attempt, Finish, Placement, PrefixOrigin, PrefixSource, Progress

RECORDED_OPTIONS = 8  # a placement's record keeps the chosen worker and this many others by cost and by holding


def _kept(values: dict[str, float], chosen: str, best_first) -> dict[str, float]:
    """The chosen worker's entry and the RECORDED_OPTIONS others that rank first by ``best_first``."""
    others = sorted((w for w in values if w != chosen), key=best_first)[:RECORDED_OPTIONS]
    return {w: values[w] for w in [chosen, *others] if w in values}


class NodeKind(StrEnum):
    SEGMENT = "segment"
    THREAD = "thread"
    JOIN = "join"


class NodeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class NodePlacement:
    """Where a node's request ran and why (the numbers that chose it), the attempts lost with
    their worker, and where its prompt's KV came from."""

    worker: str
    reason: str = ""
    costs: dict[str, float] = field(default_factory=dict)  # worker -> estimated seconds (the cheapest)
    matched: dict[str, int] = field(default_factory=dict)  # worker -> leading prompt tokens its cache held (the most)
    matched_tokens: int = 0  # of which the chosen worker's
    by: str = ""
    source: str = ""  # the peer its prompt's KV was to be pulled from ("": none)
    pull_tokens: int = 0
    pull_costs: dict[str, float] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    prefix: PrefixOrigin | None = None
    decided_ms: float = 0.0  # the placer's time to choose (wall clock)
    decided_cpu_ms: float = 0.0  # the CPU its thread spent choosing

    @classmethod
    def of(cls, placement: Placement, progress: Progress) -> NodePlacement:
        """The placement as the record keeps it: its numbers for the chosen worker and for the
        RECORDED_OPTIONS cheapest and most-holding others (a record stays the same size on 64
        workers as on 8)."""
        p = placement
        costs = _kept(p.costs, p.worker, lambda w: p.costs[w])
        matched = _kept(p.matched, p.worker, lambda w: -p.matched[w])
        pull_costs = _kept(p.pull_costs, p.worker, lambda w: p.pull_costs[w])
        return cls(p.worker, p.reason, costs, matched, p.matched_tokens, p.by, p.source,
                   p.pull_tokens, pull_costs, list(progress.attempts), progress.prefix, p.decided_ms,
                   p.decided_cpu_ms)

    @classmethod
    def from_dict(cls, d: dict) -> NodePlacement:
        prefix = d.get("prefix")
        return cls(**{**d, "attempts": [Attempt(**a) for a in d.get("attempts", [])],
                      "prefix": PrefixOrigin(**{**prefix, "source": PrefixSource(prefix["source"])}) if prefix else None})


@dataclass
class ForkRecord:
    """A fork asked for by a node's plan: its threads, the policy, what the engines' side advised
    (with its estimates), and the width run (0: refused) and why."""

    threads: int
    policy: ForkPolicy
    advice: ForkAdvice
    width: int
    reason: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> ForkRecord:
        a = d["advice"]
        advice = ForkAdvice(a["width"], a["reason"], [WidthEstimate(**e) for e in a["estimates"]])
        return cls(**{**d, "policy": ForkPolicy(d["policy"]), "advice": advice})


@dataclass
class Node:
    id: int
    kind: NodeKind
    label: str = ""
    depth: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, from the engine's prefix cache (its own count)
    worker: str = ""
    status: NodeStatus = NodeStatus.PENDING
    finish: Finish | str = ""  # "" until it ends
    started: float = 0.0
    first_token: float = 0.0
    ended: float = 0.0
    placement: NodePlacement | None = None
    fork: ForkRecord | None = None  # the fork its plan asked for (a node that wrote a plan)

    def record(self, progress: Progress) -> None:
        """What the engine client saw of the node's request."""
        self.tokens, self.cached_tokens = progress.tokens, progress.cached_tokens
        self.started, self.first_token, self.ended = progress.started, progress.first_token, progress.ended
        if progress.placement is not None:
            self.worker = progress.placement.worker
            self.placement = NodePlacement.of(progress.placement, progress)

    def end(self, status: NodeStatus, finish: Finish) -> None:
        self.status, self.finish = status, finish

    @classmethod
    def from_dict(cls, d: dict) -> Node:
        placement = NodePlacement.from_dict(d["placement"]) if d.get("placement") else None
        fork = ForkRecord.from_dict(d["fork"]) if d.get("fork") else None
        return cls(**{**d, "kind": NodeKind(d["kind"]), "status": NodeStatus(d["status"]),
                      "finish": Finish(d["finish"]) if d["finish"] else "", "placement": placement, "fork": fork})


@dataclass
class ThreadDAG:
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)

    def add(self, kind: NodeKind, after: list[int] | None = None, **attrs) -> Node:
        node = Node(id=len(self.nodes), kind=kind, **attrs)
        self.nodes.append(node)
        self.edges.extend((a, node.id) for a in (after or []))
        return node

    def fork(self, parent: int, labels: list[str], depth: int) -> tuple[list[Node], Node]:
        """Thread nodes after ``parent`` and the join node that waits for all of them."""
        threads = [self.add(NodeKind.THREAD, [parent], label=lb, depth=depth) for lb in labels]
        join = self.add(NodeKind.JOIN, [t.id for t in threads], label="join", depth=depth - 1)
        return threads, join

    def predecessors(self, node_id: int) -> list[int]:
        return [a for a, b in self.edges if b == node_id]

    def topological_order(self) -> list[int]:
        indeg = {n.id: 0 for n in self.nodes}
        for _, b in self.edges:
            indeg[b] += 1
        ready = [i for i, d in indeg.items() if d == 0]
        order: list[int] = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for a, b in self.edges:
                if a == n:
                    indeg[b] -= 1
                    if indeg[b] == 0:
                        ready.append(b)
        if len(order) != len(self.nodes):
            raise ValueError("ThreadDAG has a cycle")
        return order

    def critical_path_tokens(self) -> int:
        best: dict[int, int] = {}
        for n in self.topological_order():
            before = max((best[p] for p in self.predecessors(n)), default=0)
            best[n] = before + self.nodes[n].tokens
        return max(best.values(), default=0)

    def total_tokens(self) -> int:
        return sum(n.tokens for n in self.nodes)

    def threads(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == NodeKind.THREAD]

    def to_dict(self) -> dict:
        return {"nodes": [asdict(n) for n in self.nodes], "edges": [list(e) for e in self.edges],
                "total_tokens": self.total_tokens(), "critical_path_tokens": self.critical_path_tokens()}

    @classmethod
    def from_dict(cls, d: dict) -> ThreadDAG:
        return cls([Node.from_dict(n) for n in d["nodes"]], [tuple(e) for e in d["edges"]])
