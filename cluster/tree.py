"""Renders a job's thread DAG as a text tree for the CLI."""
from __future__ import annotations


def render(record) -> str:
    dag = record.dag or {}
    nodes = dag.get("nodes", [])
    t0 = min((n["started"] for n in nodes if n["started"]), default=0.0)
    lines = [(f"job {record.id}  status={record.status}  total={dag.get('total_tokens', 0)} tokens  "
              f"critical path={dag.get('critical_path_tokens', 0)} tokens")]
    for n in nodes:
        if n["kind"] == "join":
            lines.append("  " * n["depth"] + "└─ join")
            continue
        name = f"thread {n['label']}" if n["kind"] == "thread" else n["label"]
        span = f"{n['started'] - t0:6.2f}s..{n['ended'] - t0:6.2f}s" if n["started"] else "not run"
        lines.append(f"{'  ' * n['depth']}{'├─ ' if n['depth'] else ''}{name:<12} {n['tokens']:>5} tok  "
                     f"cached {n['cached_tokens']:>4}/{n['prompt_tokens']:<4} {span}  {n['worker']}  {n['finish']}")
    lines += [f"note: {x}" for x in record.notes]
    if record.error:
        lines.append(f"error: {record.error}")
    return "\n".join(lines)
