"""APR (Parallel-Reasoning/APR): a parent calls sub-searches; each child starts from a fresh
context holding its node's state; the join rewrites the call section with the children's results.

The rules are those of APR's inference controller (``src/eval/parallel_infernce_utils.py``,
``src/eval/eval_apr.py``) and its trace generator (``src/data/search.py``); docs/formats.md
cites them line by line:
- a child's node state comes from the parent's text: a ``Moving to Node #id`` line followed by a
  ``Current State:`` line, else the ``Generated Node #id: T:[nums] Operation: op`` line (its
  operations are its parent node's plus ``op``);
- a child's prompt is ``Moving to Node #id\\nCurrent State: T:[nums], Operations: [ops]``;
- a child succeeded when its text holds ``Goal Reached`` twice; its result is what follows the
  line of the second-to-last one;
- the join keeps the parent's text up to its last ``<Calling Sub Searches>\\n`` and appends
  ``<Sub Searches>\\n``, a line per child (and a solved child's path), ``<End Sub Searches>\\n``.
"""
from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass

from orchestrator.plan.formats import Outline, Plan, PlanFormat, ThreadResult

CALL_OPEN = "<Calling Sub Searches>\n"
CALL_LINE = "<Start Sub Search"
MOVING = "Moving to Node #"
GOAL = "Goal Reached"


@dataclass(frozen=True)
class NodeState:
    node: str  # "#0,1"
    target: int
    nums: list[int]
    operations: list[str]

    def prompt(self) -> str:
        return (f"Moving to Node {self.node}\nCurrent State: {self.target}:[{', '.join(map(str, self.nums))}], "
                f"Operations: {self.operations}")


@dataclass(frozen=True)
class APRFormat(PlanFormat):
    def find_plan(self, context: str) -> Plan | None:
        """The call section ending ``context``: one child per spawn line, in line order, its
        outline text the child's whole prompt."""
        if not context.rstrip("\n").endswith(self.tags.plan_close):
            return None
        start = context.rfind(CALL_OPEN)
        section = context[start + len(CALL_OPEN) if start >= 0 else 0:]
        states = node_states(context)
        outlines, notes = [], []
        for line in section.split("\n"):
            if CALL_LINE in line and "Moving to Node" in line:
                node_id = line.split(MOVING)[1].strip()
                if node_id in states:
                    outlines.append(Outline(str(len(outlines)), states[node_id].prompt()))
                else:
                    notes.append(f"no state for node #{node_id} in the parent's text: no sub-search")
        return Plan(self.name, tuple(outlines), max(start, 0), tuple(notes))

    def thread_header(self, outline: Outline) -> str:
        return outline.text  # the child's prompt: a fresh context of its own

    def render_join(self, context: str, plan: Plan, results: list[ThreadResult]) -> str:
        kept = CALL_OPEN.join(context.split(CALL_OPEN)[:-1])
        lines = [kept, "<Sub Searches>\n"]
        for i, r in enumerate(results):
            node = r.outline.text.split("\n")[0].removeprefix("Moving to Node ")
            found = search_result(r.text)
            if found is None:
                lines.append(f"<No Solution in Sub Search {i} at level 1 at Node {node}>\n")
            else:
                lines.append(f"<Goal Reached in Sub Search {i} at level 1 at Node {node}>\n{found}\n")
        return "".join(lines) + "<End Sub Searches>\n"

    def render_block(self, outlines: list[Outline], bodies: list[str], after: str = "", conclusion: str = "") -> str:
        calls = "".join(f"<Start Sub Search {o.id} at level 1> Moving to Node #{o.text}\n" for o in outlines)
        return f"{CALL_OPEN}{calls}{self.tags.plan_close}\n" + after


def search_result(text: str) -> str | None:
    """A child's solution path: the text after the line of its second-to-last ``Goal Reached``,
    stripped; None when it holds fewer than two."""
    if text.count(GOAL) < 2:
        return None
    at = text.rfind(GOAL, 0, text.rfind(GOAL))
    return text[at:].strip()[len(GOAL) + 1:]


def node_states(text: str) -> dict[str, NodeState]:
    """Every node whose state the text gives: from ``Moving to Node``/``Current State`` line
    pairs first, then from ``Generated Node`` lines (whose operations extend their parent's)."""
    lines = text.split("\n")
    states: dict[str, NodeState] = {}
    for here, below in itertools.pairwise(lines):
        if MOVING in here and "Current State:" in below:
            node_id = here.split(MOVING)[1].strip()
            states[node_id] = _current_state(node_id, below)
    for line in lines:
        if "Generated Node" in line:
            node_id = line.split(":")[0].split("#")[1]
            parent = states.get(",".join(node_id.split(",")[:-1]))
            if node_id not in states and parent is not None:  # APR's controller fails the search otherwise
                states[node_id] = _generated(node_id, line, parent)
    return states


def _current_state(node_id: str, line: str) -> NodeState:
    state = line.split("Current State:")[1].split("],")[0].strip()
    target, nums = state.split(":", 1)
    return NodeState(f"#{node_id}", int(target), ast.literal_eval(nums.strip() + "]"),
                     ast.literal_eval(line.split("Operations:")[1].strip()))


def _generated(node_id: str, line: str, parent: NodeState) -> NodeState:
    rest = line.split(":", 1)[1].strip()
    state, operation = rest.split("Operation:")[0].strip(), rest.split("Operation:")[1].strip()
    target, nums = state.split(":", 1)
    return NodeState(f"#{node_id}", int(target), ast.literal_eval(nums.strip()), parent.operations + [operation])
