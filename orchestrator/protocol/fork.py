"""A fork's width as the engines see it: the policy, the question the driver asks, the answer.

The driver asks the engines' side (``EngineClient.fork_width``) how many of a plan's threads
should run at once before the budget admits the fork; the answer, with the estimates behind it,
goes into the job's record (``plan.dag.ForkRecord``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ForkPolicy(StrEnum):
    ADAPTIVE = "adaptive"  # the width whose estimated cost to the job and to everyone else is least
    EAGER = "eager"  # every thread at once (as far as the budget allows)
    NEVER = "never"  # every fork refused: the model writes its threads itself


@dataclass(frozen=True)
class ForkQuery:
    """A plan of ``threads`` outlines, whose first thread's prompt is ``prompt_ids`` (the context,
    then its header: what the threads' requests share), asked at ``policy``. ``target_left_s``:
    the seconds left to the job's latency target (None: the job gave none)."""

    prompt_ids: list[int]
    threads: int
    header_tokens: int
    policy: ForkPolicy
    target_left_s: float | None = None


@dataclass(frozen=True)
class WidthEstimate:
    """Running a fork ``width`` threads at a time (0: refused, the model writes them itself)."""

    width: int
    job_s: float  # estimated seconds the fork adds to the job's critical path
    others_s: float  # estimated seconds it adds to the other requests' latencies, summed

    @property
    def total_s(self) -> float:
        return self.job_s + self.others_s


@dataclass(frozen=True)
class ForkAdvice:
    """How many threads to run at once, why, and the estimates compared (empty but for ``adaptive``)."""

    width: int
    reason: str
    estimates: list[WidthEstimate] = field(default_factory=list)
