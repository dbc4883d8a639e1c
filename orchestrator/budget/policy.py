"""A job's budget (every field bounded), a fork's admission and a token lease's grant."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


class BudgetError(ValueError):
    pass


# Each field's bounds (inclusive): a budget past them is a mistake, never a wish to run forever.
LIMITS: dict[str, tuple[float, float]] = {
    "max_total_tokens": (1, 10_000_000), "max_width": (1, 1024), "max_depth": (1, 32),
    "max_thread_tokens": (1, 10_000_000), "max_fork_rounds": (1, 1024),
    "deadline_s": (0.001, 7 * 86_400), "min_thread_tokens": (1, 1_000_000),
}


@dataclass(frozen=True)
class JobBudget:
    max_total_tokens: int = 8192
    max_width: int = 8
    max_depth: int = 6  # as deep as Multiverse's engine forks (a format that does not nest never does)
    max_thread_tokens: int = 512
    max_fork_rounds: int = 16
    deadline_s: float = 300.0
    min_thread_tokens: int = 16

    def __post_init__(self):
        for name, value in asdict(self).items():
            lo, hi = LIMITS[name]
            if not lo <= value <= hi:
                raise BudgetError(f"budget.{name} must be in [{lo:g}, {hi:g}], got {value!r}")

    @classmethod
    def from_dict(cls, d: dict | None, base: JobBudget | None = None) -> JobBudget:
        base_d = asdict(base or cls())
        if not isinstance(d, dict | None):
            raise BudgetError(f"budget must be an object, got {type(d).__name__}")
        unknown = set(d or {}) - set(base_d)
        if unknown:
            raise BudgetError(f"unknown budget field(s): {', '.join(sorted(unknown))}")
        merged = {k: _typed(k, v, type(base_d[k])) for k, v in {**base_d, **(d or {})}.items()}
        return cls(**merged)


def _typed(name: str, value, kind: type) -> int | float:
    """``value`` as the field's type: ints from ints or integral floats, floats finite."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BudgetError(f"budget.{name} must be a finite number, got {value!r}")
    if kind is int:
        if value != int(value):
            raise BudgetError(f"budget.{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class Admission:
    width: int  # threads to run at once; 0 = refused, go on sequentially
    thread_max_tokens: int = 0
    reason: str = ""

    @property
    def admitted(self) -> bool:
        return self.width > 0


@dataclass(frozen=True)
class Grant:
    """The tokens a thread now holds, past those it has reported used (0 with ``stop``: why the
    job must stop)."""

    tokens: int
    stop: str = ""
    # when the job's deadline passes (the ledger's clock, epoch seconds): said with the grant, not part of it
    until: float = field(default=math.inf, compare=False)


@dataclass(frozen=True)
class JobUsage:
    """What a job used, as its record keeps it."""

    tokens: int
    forks: int
    per_thread: dict[str, int]
    exhausted: str
    budget: JobBudget

    def to_dict(self) -> dict:
        return asdict(self)
