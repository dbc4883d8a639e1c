"""What the driver keeps while a job runs: the job's context, its lanes, its threads' outcomes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.budget.policy import JobBudget
from orchestrator.driver.records import JobRecord, JobRequest
from orchestrator.plan.dag import ThreadDAG
from orchestrator.plan.formats import Outline, PlanFormat
from orchestrator.protocol.segment import Finish


@dataclass
class Lane:
    """A sequence of segments: the main thread, or one thread (which may fork again)."""

    ids: list[int]
    depth: int
    last: int  # the DAG node the next segment comes after
    stops: list[str]
    cap: int  # tokens this lane may still generate
    is_thread: bool = False
    start: int = 0  # where the lane's own text begins in ids (a thread: after its header)
    inline_block: bool = False  # the lane writes a block itself (its fork refused, or its plan malformed)


@dataclass
class ThreadOutcome:
    """One thread of a block, as the join needs it."""

    outline: Outline
    header: list[int]  # the header's ids (what the thread's prompt added to the context)
    ids: list[int]  # what the thread generated after its header
    finish: Finish


@dataclass
class JobContext:
    record: JobRecord
    request: JobRequest
    fmt: PlanFormat
    budget: JobBudget
    dag: ThreadDAG = field(default_factory=ThreadDAG)
    emit: Callable[[str], None] | None = None  # the main lane's text, as it grows (a streamed job)
    prompt_len: int = 0
    main: Lane | None = None  # the main thread's lane, once the prompt is encoded

    def note(self, *notes: str) -> None:
        self.record.notes.extend(notes)

    def show(self, text: str) -> None:
        if self.emit is not None and text:
            self.emit(text)
