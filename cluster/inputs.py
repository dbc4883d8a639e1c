"""What the command-line entry points (``loom run``, ``loom submit``, ``python -m cluster.jobs``)
take from a user, turned into the body of ``POST /v1/jobs``: one reading for all of them.

A question is a user message: the served model's chat template renders it (for the shipped
model, ``Q: <expr>\\n``), exactly as ``/v1/chat/completions`` does, so every entry point sends
the model the same prompt for the same question.
"""
from __future__ import annotations


class InputError(ValueError):
    """A user's input that cannot be a job; the message names the problem."""


def question_body(question: str) -> dict:
    q = question.strip()
    if not q:
        raise InputError("the question is empty")
    return {"messages": [{"role": "user", "content": q}]}


def parse_budget(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs (``--budget``) as a budget mapping; values are numbers."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--budget expects key=value, got {item!r}")
        try:
            out[key] = float(value) if "." in value else int(value)
        except ValueError:
            raise InputError(f"--budget {key}: {value!r} is not a number") from None
    return out
