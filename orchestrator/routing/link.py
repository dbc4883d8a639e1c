"""What moving KV between two engines costs, learned from the transfers done.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class LinkModel:
    """What moving KV between two engines costs: ``fixed_s + bytes / bytes_per_s``, fitted by
    least squares to the last ``window`` transfers (the hold's round trip and the pull, as the
    target reported it). Until two different sizes have been seen, only ``fixed_s`` moves."""

    bytes_per_s: float = 1e9
    fixed_s: float = 0.02
    bytes_per_token: dict[str, int] = field(default_factory=dict)  # per worker (model and dtype)
    window: int = 64
    samples: deque = field(default_factory=deque)  # (bytes, seconds)

    def set_bytes_per_token(self, worker: str, n: int) -> None:
        self.bytes_per_token[worker] = n

    def transfer_s(self, worker: str, tokens: int) -> float:
        return self.fixed_s + tokens * self.bytes_per_token.get(worker, 0) / self.bytes_per_s

    def observe(self, nbytes: int, seconds: float) -> None:
        self.samples.append((float(nbytes), seconds))
        while len(self.samples) > self.window:
            self.samples.popleft()
        if not self.samples:  # window 0: a fixed model that learns nothing
            return
        xs, ys = [x for x, _ in self.samples], [y for _, y in self.samples]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in self.samples) / sxx if sxx > 0 else 0.0
        if slope > 0:
            self.bytes_per_s = 1 / slope
        self.fixed_s = max(0.0, my - mx / self.bytes_per_s)
