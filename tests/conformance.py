"""The conformance harness: a case's model answers each prompt Loom's driver sends with the text the
case gives for it, and records every prompt; the driver (fork, thread prompts, join) is Loom's
own, run as a job. Cases live in tests/data/conformance/*.json (README there); each rule says
which prompt it answers by the text that prompt ends with."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.budget.ledger import Ledger
from orchestrator.budget.local import LocalBudget
from orchestrator.driver.job import JobRunner
from orchestrator.driver.records import JobRecord, JobRequest
from orchestrator.protocol.fork import ForkAdvice, ForkPolicy, ForkQuery
from orchestrator.protocol.segment import Finish, Placement, Progress, SegmentRequest, SegmentResult, TokenSpender
from orchestrator.telemetry.metrics import NullMetrics

CASES = Path(__file__).resolve().parent / "data" / "conformance"


@dataclass
class Rule:
    after: str  # the prompt's text ends with this
    output: str  # what the model writes (a stop, when it ends on one, included)
    finish: Finish = Finish.STOP


@dataclass
class CaseModel:
    """Stands in for the engines (``EngineClient``): the first rule whose ``after`` ends the prompt
    (the longest, where several do) answers it."""

    tok: object
    rules: list[Rule]
    prompts: list[str] = field(default_factory=list)

    async def fork_width(self, query: ForkQuery) -> ForkAdvice:
        return ForkAdvice(0 if query.policy is ForkPolicy.NEVER else query.threads, f"scripted: {query.policy}")

    async def generate(self, call: SegmentRequest, lease: TokenSpender, progress: Progress) -> SegmentResult:
        text = prompt_text(self.tok, call.prompt_ids)
        self.prompts.append(text)
        rule = max((r for r in self.rules if text.endswith(r.after)), key=lambda r: len(r.after), default=None)
        if rule is None:
            raise AssertionError(f"no rule answers a prompt ending {text[-80:]!r}")
        ids = self.tok.encode(rule.output, add_special_tokens=False)
        finish, stop = rule.finish, next((s for s in call.stops if rule.output.endswith(s)), None)
        if finish == Finish.EOS:
            ids.append(self.tok.eos_token_id)
        ids, finish, stop = within(ids, finish, stop, call.max_tokens)
        progress.placement, progress.tokens = Placement("case"), len(ids)
        await lease.spend(len(ids))
        return SegmentResult(ids, finish if finish != Finish.STOP or stop else Finish.EOS, stop)


def prompt_text(tok, ids: list[int]) -> str:
    """A prompt's text as a scripted model reads it: without leading BOS (APR's controller sends
    its BOS as text too)."""
    text = tok.decode(ids, skip_special_tokens=False)
    while text.startswith(tok.bos_token):
        text = text[len(tok.bos_token):]
    return text


def within(ids: list[int], finish: Finish, stop: str | None, max_tokens: int) -> tuple[list[int], Finish, str | None]:
    """An output cut to the request's ``max_tokens``, as an engine ends it (by length, no stop)."""
    if len(ids) > max_tokens:
        return ids[:max_tokens], Finish.LENGTH, None
    return ids, finish, stop


def load_cases(fmt: str) -> list[dict]:
    return json.loads((CASES / f"{fmt}.json").read_text())["cases"]


def run_case(tok, case: dict) -> tuple[JobRecord, CaseModel]:
    rules = [Rule(r["after"], r["output"], Finish(r.get("finish", "stop"))) for r in case["rules"]]
    model = CaseModel(tok, rules)
    runner = JobRunner(model, LocalBudget(Ledger()), tok, max_model_len=4096, metrics=NullMetrics(),
                       default_format=case["format"])
    req = JobRequest(prompt=case["prompt"], format=case["format"], budget=case.get("budget", {}))
    return asyncio.run(runner.run(JobRecord.new(req))), model
