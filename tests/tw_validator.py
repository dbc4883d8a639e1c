"""ThreadWeaver's format rules for a parallel block, as its data pipeline's validator states them
(facebookresearch/threadweaver, data_generation/src/filter-format-correct-and-obtain-stats.py,
``is_parallel_format_correct_v2``, read at 26622324; docs/formats.md): written for Loom's tests,
with its strict setting for the whitespace between threads and no conclusion required."""
from __future__ import annotations

import re

ALLOWED = ("outlines", "outline", "thread", "conclusion")
BLOCK = re.compile(r"<Parallel>(.*?)</Parallel>", re.DOTALL)
LAYOUT = re.compile(r"^\s*<Outlines>(?P<outlines>.*?)</Outlines>\s*(?P<threads>(?:<Thread>.*?</Thread>)+)\s*$", re.DOTALL)
NUMBERED = re.compile(r"^\s*(\d+):\s*(.+)$", re.DOTALL)


def problems(text: str) -> list[str]:
    """Why ``text``'s parallel blocks break ThreadWeaver's rules (empty: they keep them)."""
    if text.count("<Parallel>") != text.count("</Parallel>"):
        return ["unbalanced <Parallel>"]
    return [p for m in BLOCK.finditer(text) for p in _block(m.group(1))]


def _block(body: str) -> list[str]:
    tags = {t.lower() for t in re.findall(r"<(?:/?)(\w+)>", body)}
    if "parallel" in tags or tags - set(ALLOWED):
        return [f"tags not allowed in a block: {sorted(tags - set(ALLOWED))}"]
    m = LAYOUT.match(body)
    if m is None:
        return ["not <Outlines> then threads"]
    outlines = re.findall(r"<Outline>(.*?)</Outline>", m.group("outlines"), re.DOTALL)
    threads = [t.group(1) for t in re.finditer(r"<Thread>(.*?)</Thread>", m.group("threads"), re.DOTALL)]
    numbers = [_number(o) for o in outlines]
    if numbers != list(range(1, len(outlines) + 1)) or len(threads) != len(outlines):
        return [f"outlines numbered {numbers} with {len(threads)} threads"]
    if [_number(t) for t in threads] != numbers:
        return ["thread numbers differ from the outlines'"]
    if re.search(r"</Thread>(\s+)<Thread>", m.group("threads")):
        return ["Nonempty whitespace between Thread tags"]
    return []


def _number(text: str) -> int | None:
    m = NUMBERED.match(text.strip())
    return int(m.group(1)) if m else None
