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

    async def generate(self, call: SegmentRequest, lease: TokenSpender, progress: Progress) -> SegmentResult:
        text = self.tok.decode(call.prompt_ids, skip_special_tokens=False)
        while text.startswith(self.tok.bos_token):
            text = text[len(self.tok.bos_token):]
        self.prompts.append(text)
        rule = max((r for r in self.rules if text.endswith(r.after)), key=lambda r: len(r.after), default=None)
        if rule is None:
            raise AssertionError(f"no rule answers a prompt ending {text[-80:]!r}")
        ids = self.tok.encode(rule.output, add_special_tokens=False)
        finish, stop = rule.finish, next((s for s in call.stops if rule.output.endswith(s)), None)
        if finish == Finish.EOS:
            ids.append(self.tok.eos_token_id)
        if len(ids) > call.max_tokens:
            ids, finish, stop = ids[:call.max_tokens], Finish.LENGTH, None
        progress.placement, progress.tokens = Placement("case"), len(ids)
        await lease.spend(len(ids))
        return SegmentResult(ids, finish if finish != Finish.STOP or stop else Finish.EOS, stop)


def load_cases(fmt: str) -> list[dict]:
    return json.loads((CASES / f"{fmt}.json").read_text())["cases"]


def run_case(tok, case: dict) -> tuple[JobRecord, CaseModel]:
    rules = [Rule(r["after"], r["output"], Finish(r.get("finish", "stop"))) for r in case["rules"]]
    model = CaseModel(tok, rules)
    runner = JobRunner(model, LocalBudget(Ledger()), tok, max_model_len=4096, metrics=NullMetrics(),
                       default_format=case["format"])
    req = JobRequest(prompt=case["prompt"], format=case["format"], budget=case.get("budget", {}))
    return asyncio.run(runner.run(JobRecord.new(req))), model
