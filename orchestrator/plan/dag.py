"""ThreadDAG: the shape of one job's reasoning, as it unfolds.

Nodes are main segments, threads and joins; an edge says "must finish before". A fork
adds one thread node per outline after the node that wrote the plan and one join node
after all of them; a nested block inside a thread does the same under that thread.
The critical path (longest token-weighted path) is the papers' "token latency".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Node:
    id: int
    kind: str  # "segment" | "thread" | "join"
    label: str = ""
    depth: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    worker: str = ""
    status: str = "pending"  # pending | running | done | cancelled | failed
    finish: str = ""
    started: float = 0.0
    first_token: float = 0.0
    ended: float = 0.0
    placement: dict = field(default_factory=dict)  # held_tokens, reason, costs: why this worker


@dataclass
class ThreadDAG:
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)

    def add(self, kind: str, after: list[int] | None = None, **attrs) -> Node:
        node = Node(id=len(self.nodes), kind=kind, **attrs)
        self.nodes.append(node)
        self.edges.extend((a, node.id) for a in (after or []))
        return node

    def fork(self, parent: int, labels: list[str], depth: int) -> tuple[list[Node], Node]:
        """Thread nodes after ``parent`` and the join node that waits for all of them."""
        threads = [self.add("thread", [parent], label=lb, depth=depth) for lb in labels]
        join = self.add("join", [t.id for t in threads], label="join", depth=depth - 1)
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
        return [n for n in self.nodes if n.kind == "thread"]

    def to_dict(self) -> dict:
        return {"nodes": [asdict(n) for n in self.nodes], "edges": [list(e) for e in self.edges],
                "total_tokens": self.total_tokens(), "critical_path_tokens": self.critical_path_tokens()}

    @classmethod
    def from_dict(cls, d: dict) -> ThreadDAG:
        return cls([Node(**n) for n in d["nodes"]], [tuple(e) for e in d["edges"]])
