"""How long a simulated engine step takes: seconds from the batch the step runs.

A step decodes one token for each running sequence past its prefill and prefills up to the
step's token budget. Its time is the decode time at that batch size (piecewise linear between
the profile's measured sizes, extended along the last segment past the largest; a step of
prefill only costs a batch of one's), plus, where it prefills, a fixed cost and the prefilled
tokens times seconds per prefilled token. A request reaches the scheduler ``arrival_s`` after it is submitted (vLLM: the hop from
the API process to the engine core and back). A profile names its source: measured here
(``bench.sim_profile`` records a real engine's), or published figures, cited.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROFILES = Path(__file__).resolve().parent / "profiles"
DEFAULT = "cpu-loom-arith"


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class StepProfile:
    name: str
    source: str  # where the figures come from: the machine and engine measured, or a citation
    prefill_s_per_token: float
    decode_s: dict[int, float]  # running sequences -> seconds per decode step
    prefill_step_s: float = 0.0  # what a step that prefills anything costs besides its tokens
    max_batched_tokens: int = 2048  # tokens one step computes (vLLM's max_num_batched_tokens)
    arrival_s: float = 0.0  # from a request's submission to its first schedulable step
    host_busy_share: float = 0.0  # of a core the engine's host side keeps busy while it works (host_load.py)
    worker_cpu_s_per_step: float = 0.0  # CPU the worker's process spends per step and per token made (front_end.py)
    worker_cpu_s_per_token: float = 0.0
    kv_tokens: int = 0  # tokens of KV the engine's device holds (0: the engine config's memory decides)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.decode_s or any(b < 1 or s <= 0 for b, s in self.decode_s.items()):
            raise ProfileError(f"profile {self.name}: decode_s needs batch sizes >= 1 with seconds > 0")
        if min(self.prefill_s_per_token, self.prefill_step_s, self.arrival_s) < 0 or self.max_batched_tokens < 1:
            raise ProfileError(f"profile {self.name}: prefill_s_per_token, prefill_step_s and arrival_s >= 0, "
                               "max_batched_tokens >= 1")
        if not 0 <= self.host_busy_share <= 1:
            raise ProfileError(f"profile {self.name}: host_busy_share within 0..1")
        if self.worker_cpu_s_per_step < 0 or self.worker_cpu_s_per_token < 0 or self.kv_tokens < 0:
            raise ProfileError(f"profile {self.name}: worker_cpu_s_per_step, worker_cpu_s_per_token and kv_tokens >= 0")

    def step_s(self, decoding: int, prefilled: int) -> float:
        """Seconds of a step decoding ``decoding`` sequences and prefilling ``prefilled`` tokens."""
        prefill = self.prefill_step_s + prefilled * self.prefill_s_per_token if prefilled else 0.0
        return self.decode_step_s(max(decoding, 1)) + prefill

    def decode_step_s(self, batch: int) -> float:
        sizes = sorted(self.decode_s)
        if len(sizes) == 1 or batch <= sizes[0]:
            return self.decode_s[sizes[0]]
        hi = next((b for b in sizes if b >= batch), sizes[-1])  # past the largest: the last segment
        lo = sizes[sizes.index(hi) - 1]
        slope = (self.decode_s[hi] - self.decode_s[lo]) / (hi - lo)
        return self.decode_s[lo] + slope * (batch - lo)

    def to_dict(self) -> dict:
        return {**asdict(self), "decode_s": {str(b): s for b, s in sorted(self.decode_s.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> StepProfile:
        try:
            return cls(name=d["name"], source=d["source"], prefill_s_per_token=float(d["prefill_s_per_token"]),
                       prefill_step_s=float(d.get("prefill_step_s", 0.0)),
                       decode_s={int(b): float(s) for b, s in d["decode_s"].items()},
                       max_batched_tokens=int(d.get("max_batched_tokens", 2048)),
                       arrival_s=float(d.get("arrival_s", 0.0)), host_busy_share=float(d.get("host_busy_share", 0.0)),
                       worker_cpu_s_per_step=float(d.get("worker_cpu_s_per_step", 0.0)),
                       worker_cpu_s_per_token=float(d.get("worker_cpu_s_per_token", 0.0)),
                       kv_tokens=int(d.get("kv_tokens", 0)),
                       notes=list(d.get("notes", [])))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProfileError(f"not a step profile: {type(e).__name__}: {e}") from e


def load(name_or_path: str) -> StepProfile:
    """A shipped profile by name (workers/sim/profiles/<name>.json), or a JSON file's path; ""
    is the default (measured here, the shipped model on the CPU engine)."""
    path = Path(name_or_path) if name_or_path.endswith(".json") else PROFILES / f"{name_or_path or DEFAULT}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILES.glob("*.json")))
        raise ProfileError(f"no step profile {name_or_path!r} (shipped: {shipped}; or a .json path)")
    return StepProfile.from_dict(json.loads(path.read_text()))
