"""Placement: which worker runs a segment or a thread. Plain Python, no Ray.

The whole policy, in one place. For each candidate worker ``w`` and a request of ``P`` prompt
tokens that is expected to generate ``T`` tokens:

    held_w      leading prompt tokens ``w``'s cache holds (the KV index: what the engine reported)
    a_w         requests in ``w``'s engine now (its last load report + what we started there
                since, less what ended)
    cost_w  =   request_w                                    its way into the engine and out
              + (1 + a_w) * (P - held_w) * prefill_w         prefill of the miss; the a_w running
                                                              requests stall meanwhile
              + T * tok_w(a_w + 1)                           this request's decode
              + a_w * T * (tok_w(a_w + 1) - tok_w(a_w))      the slowdown it causes the others

``prefill_w`` (seconds per prompt token), ``request_w`` (a request's cost besides its tokens)
and ``tok_w(b)`` (seconds per token of a sequence with b in the engine: the decode step at batch b,
stretched past ``max_num_seqs`` by the time it waits for a slot, ``EngineProfile.token_s``) are
the engine's own, measured by its worker at start-up (``EngineProfile``); ``T`` is the mean
output length of the requests placed so far.

With KV transfer on (``LinkModel``), each worker has a second option: pull the tokens it lacks
from the worker ``h`` holding the most of the prompt instead of recomputing them::

    pull_w  =   cost_w with held_w := held_h
              + fixed_s + (held_h - held_w) * bytes_per_token / link_bytes_per_s

(the transfer does not stall ``w``'s running requests: the request waits for its blocks
outside the batch). ``link_bytes_per_s`` and ``fixed_s`` (the holder's round trip to pin the
blocks, the control messages) are fitted to the transfers done so far (``LinkModel``),
starting from configured guesses.

The cheapest (worker, option) wins; ties go to the one holding more of the prompt, then to
the first. So a fork's threads stay with the worker that
holds their prefix until that engine is so loaded that recomputing the prefix elsewhere is
cheaper: a cache miss is never sent to the busiest worker just because it is "free" of the
prefix elsewhere (the SGLang router's known failure), and a hit is never piled onto an engine
past the point where it costs more than it saves.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.protocol.engine import EngineLoad, EngineProfile
from orchestrator.protocol.segment import Placement
from orchestrator.routing.link import LinkModel

DECISIONS_KEPT = 10_000  # the seconds of the last placement decisions, for benches and metrics


class PrefixIndex(Protocol):
    def matched(self, ids: list[int], workers: list[str]) -> dict[str, int]: ...


@dataclass
class Placer:
    workers: list[str]
    index: PrefixIndex
    profiles: dict[str, EngineProfile] = field(default_factory=dict)
    loads: dict[str, EngineLoad] = field(default_factory=dict)
    # requests started minus requests ended since the worker's last report was asked for
    sent: dict[str, int] = field(default_factory=dict)
    expected_tokens: float = 64.0  # mean output length so far (T)
    placed: int = 0
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    down: set[str] = field(default_factory=set)  # workers lost and not back yet: never chosen
    link: LinkModel | None = None  # KV transfer between workers; None: off (recompute what is missing)
    decision_s: deque = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))

    # -- the workers
    def add_worker(self, name: str, profile: EngineProfile, kv_bytes_per_token: int) -> None:
        """A worker's engine is (again) up: its measured speed and KV size; it may be chosen."""
        self.profiles[name] = profile
        if self.link is not None:
            self.link.set_bytes_per_token(name, kv_bytes_per_token)
        self.down.discard(name)

    def mark_down(self, name: str) -> None:
        self.down.add(name)

    def live(self) -> list[str]:
        return [w for w in self.workers if w not in self.down]

    def set_link(self, link: LinkModel | None) -> None:
        """KV transfer on (a link model) or off (None)."""
        self.link = link

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        """A pull that was done: the link model learns its cost."""
        if self.link is not None:
            self.link.observe(nbytes, seconds)

    # -- the choice
    def place(self, ids: list[int]) -> Placement:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        chosen = self.choose(ids)
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        self.decision_s.append(seconds)
        return dataclasses.replace(chosen, decided_ms=round(seconds * 1000, 3), decided_cpu_ms=round(cpu * 1000, 3))

    def choose(self, ids: list[int]) -> Placement:
        live = self.live()
        if not live:
            raise RuntimeError("no live worker to place on")
        held = self.index.matched(ids, live)
        costs = {w: self.cost(w, len(ids), held[w]) for w in live}
        pulls = self._pull_costs(live, len(ids), held)
        options = [(c, -held[w], self.workers.index(w), w, "") for w, c in costs.items()]
        options += [(c, -held[w], self.workers.index(w), w, src) for w, (c, src) in pulls.items()]
        *_, best, source = min(options)
        pull_costs = {w: c for w, (c, _) in pulls.items()}
        if source:
            return Placement(best, self._pull_reason(best, source, held), costs, held, self.name,
                             source=source, pull_tokens=held[source] - held[best], pull_costs=pull_costs)
        return Placement(best, self._reason(best, held, costs, pull_costs), costs, held, self.name,
                         pull_costs=pull_costs)

    def _pull_costs(self, live: list[str], prompt: int, held: dict[str, int]) -> dict[str, tuple[float, str]]:
        """Per worker holding less than the best holder: the cost of pulling the difference."""
        if self.link is None or not held:
            return {}
        holder = self.holder(live, held)
        return {w: (self.cost(w, prompt, held[holder]) + self.link.transfer_s(w, held[holder] - held[w]), holder)
                for w in live if held[w] < held[holder]}

    def holder(self, live: list[str], held: dict[str, int]) -> str:
        """The live worker holding the most of a prompt (the first in order among equals)."""
        return max(live, key=lambda w: (held[w], -self.workers.index(w)))

    def cost(self, worker: str, prompt: int, held: int, extra: int = 0) -> float:
        """The formula above; ``extra``: requests to count on ``worker`` beside its own (a fork's
        threads not yet started, ``fork_width``)."""
        prof, a, t = self.profiles[worker], self.active(worker) + extra, self.expected_tokens
        after = prof.token_s(a + 1)
        return (prof.request_s + (1 + a) * (prompt - held) * prof.prefill_s_per_token + t * after
                + a * t * (after - prof.token_s(a)))

    def active(self, worker: str) -> int:
        return max(0, self.loads.get(worker, EngineLoad()).active + self.sent.get(worker, 0))

    def _reason(self, best: str, held: dict[str, int], costs: dict[str, float], pull_costs: dict[str, float]) -> str:
        most = max(held.values())
        if held[best] == most:
            return "holds the most of the prompt" if most else "cheapest (no worker holds the prompt)"
        why = f"cheaper than recomputing elsewhere: holder busy ({self.active(max(held, key=held.get))} active)"
        if best in pull_costs:
            why += (f"; recomputing {most - held[best]} held tokens here (est. {costs[best]:.4f} s) beats "
                    f"pulling them (est. {pull_costs[best]:.4f} s)")
        return why

    def _pull_reason(self, best: str, source: str, held: dict[str, int]) -> str:
        return (f"pulls {held[source] - held[best]} prompt tokens from {source}: cheaper than recomputing them "
                f"here or waiting on {source} ({self.active(source)} active)")

    def report(self, worker: str, load: EngineLoad, sent_before: int | None = None) -> None:
        """A fresh load report from ``worker``'s engine, asked for when ``sent_before`` of our
        requests had started (less those ended) since its last report (None: all of them): it
        counts those, not the ones started or ended while it was on its way."""
        self.loads[worker] = load
        sent = self.sent.get(worker, 0)
        self.sent[worker] = 0 if sent_before is None else max(0, sent - sent_before)

    def pending(self, worker: str) -> int:
        """Requests we started on ``worker`` less those ended since its last load report was asked for."""
        return self.sent.get(worker, 0)

    def started(self, worker: str) -> None:
        self.sent[worker] = self.sent.get(worker, 0) + 1

    def finished(self, worker: str, generated: int) -> None:
        """A request we started on ``worker`` has ended, having generated ``generated`` tokens."""
        self.sent[worker] = self.sent.get(worker, 0) - 1
        self.placed += 1
        self.expected_tokens += (generated - self.expected_tokens) / min(self.placed, 100)
