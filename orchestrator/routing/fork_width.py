"""How many of a fork's threads run at once (``ForkPolicy.ADAPTIVE``): the width whose estimated
seconds, the job's own and those it adds to every other request, are least. Plain Python.

A fork of ``n`` threads, each expected to write ``T`` tokens (``Placer.expected_tokens``), with
``header`` tokens per thread header, on workers whose engines have ``a`` requests and measured
speeds (``EngineProfile``: ``prefill`` seconds per prompt token, ``request`` seconds a request
costs besides its prompt's tokens, ``tok(b)`` seconds per token of a sequence with b in the engine,
which past ``max_num_seqs`` counts the wait for a slot):

    w = 0   the model writes the threads itself, in one request on the worker h that holds the
            most of the context:
                job    = n * T * tok_h(a_h + 1)
                others = a_h * n * T * (tok_h(a_h + 1) - tok_h(a_h))
    w >= 1  ceil(n / w) waves of w threads, placed one by one where ``Placer.cost`` (with the
            threads placed before counted on their workers) is least; on each worker used, its m
            threads prefill the ``miss`` prompt tokens it lacks once and their headers (a step the
            engine's a sequences wait out), each request costs the job ``request`` (its way into
            the engine and out, beside the engine's steps), then they decode with a + m in the
            engine:
                stall       = (miss + m * header) * prefill
                wave job    = max over those workers of  m * request + stall + T * tok(a + m)
                wave others = sum over them of  a * (stall + T * (tok(a + m) - tok(a)))
            then the join re-prefills threads 2..n and the headers on h (the context and thread 1
            come from its prefix cache), which the job and h's a_h others wait for:
                join = ((n - 1) * T + n * header) * prefill_h
            (both ways end with one request that goes on after the block: the same for all w).

The least ``job + others`` wins. With a latency target, the least among the widths whose job
seconds fit in the time left to it; where none fits, the least of all (a job that misses its
target anyway is not given the other requests' time). Ties go to the narrower width.

What it predicts: the fork's gain is its threads' decode overlapping, about (n - 1) * T times a
decode step's fixed part, and past ``max_num_seqs`` the larger share of the engine's slots its
threads hold; its cost the requests' own overhead on the job's path and the prefills every
sequence waits out. On the two profiles measured (this project's CPU engine, the simulated H100)
that makes every fork of threads longer than a few tokens pay at every load; a fork is narrowed
or refused where its threads are that short, where an idle worker must recompute a long prefix
for threads the holder cannot batch, or, for a latency target, where no width can meet it.

What this leaves out: pulls (``LinkModel``) could make a spread wider than estimated cheaper; the
engines' other requests are counted, not their lengths; a thread's ``T`` is the mean output of
every request placed so far, not of threads alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.protocol.fork import ForkAdvice, ForkPolicy, ForkQuery, WidthEstimate
from orchestrator.routing.placement import Placer


@dataclass(frozen=True)
class Pick:
    """A thread of a wave placed on ``worker``, the m-th there; ``miss``: the prompt tokens that
    worker lacked before the wave (its first thread there prefills them)."""

    worker: str
    m: int
    miss: int


def advise(placer: Placer, q: ForkQuery) -> ForkAdvice:
    """The width to run ``q``'s fork at, under its policy."""
    if q.policy is ForkPolicy.NEVER:
        return ForkAdvice(0, "fork policy never: the model writes its threads itself")
    if q.policy is ForkPolicy.EAGER:
        return ForkAdvice(q.threads, "fork policy eager: every thread at once")
    estimates = estimate_widths(placer, q)
    best, why = choose(estimates, q.target_left_s)
    return ForkAdvice(best.width, f"adaptive: width {best.width} of {q.threads}, {why} "
                                  f"(est. job {best.job_s:.3f} s, others {best.others_s:.3f} s)", estimates)


def choose(estimates: list[WidthEstimate], target_left_s: float | None) -> tuple[WidthEstimate, str]:
    """The least total, among those that meet the target where some do."""
    def least(options: list[WidthEstimate]) -> WidthEstimate:
        return min(options, key=lambda e: (round(e.total_s, 9), e.width))
    if target_left_s is None:
        return least(estimates), "least seconds in all"
    fitting = [e for e in estimates if e.job_s <= target_left_s]
    if fitting:
        return least(fitting), f"least seconds in all within its target ({target_left_s:.3f} s left)"
    return least(estimates), f"no width meets its target ({target_left_s:.3f} s left): least seconds in all"


def estimate_widths(placer: Placer, q: ForkQuery) -> list[WidthEstimate]:
    """One estimate per width, 0 to ``q.threads``."""
    live = placer.live()
    held = placer.index.matched(q.prompt_ids, live)
    holder = placer.holder(live, held)
    picks = greedy_picks(placer, q, live, held)
    t = placer.expected_tokens
    estimates = [alone(placer, holder, q.threads, t)]
    join = ((q.threads - 1) * t + q.threads * q.header_tokens) * placer.profiles[holder].prefill_s_per_token
    for width in range(1, q.threads + 1):
        job, others = wave(placer, picks[:width], t, q.header_tokens)
        waves = math.ceil(q.threads / width)
        estimates.append(WidthEstimate(width, round(waves * job + join, 6),
                                       round(waves * others + placer.active(holder) * join, 6)))
    return estimates


def alone(placer: Placer, holder: str, n: int, t: float) -> WidthEstimate:
    """Width 0: the n threads written one after another in one request on the holder."""
    prof, a = placer.profiles[holder], placer.active(holder)
    return WidthEstimate(0, round(n * t * prof.token_s(a + 1), 6),
                         round(a * n * t * (prof.token_s(a + 1) - prof.token_s(a)), 6))


def wave(placer: Placer, picks: list[Pick], t: float, header: int) -> tuple[float, float]:
    """(the job's seconds, the others' seconds) for one wave of these picks."""
    last = {p.worker: p for p in picks}  # per worker, its last pick: how many threads it got (m)
    job = others = 0.0
    for w, p in last.items():
        prof, a = placer.profiles[w], placer.active(w)
        stall = (p.miss + p.m * header) * prof.prefill_s_per_token
        job = max(job, p.m * prof.request_s + stall + t * prof.token_s(a + p.m))
        others += a * (stall + t * (prof.token_s(a + p.m) - prof.token_s(a)))
    return job, others


def greedy_picks(placer: Placer, q: ForkQuery, live: list[str], held: dict[str, int]) -> list[Pick]:
    """Where each of the fork's threads would go, one after another, as the placer would put them
    (the first w of them are a wave of width w). Only the workers holding the most of the prompt
    and the least loaded are tried: one of them is always the cheapest, on 8 workers or 64."""
    prompt = len(q.prompt_ids)
    candidates = sorted(live, key=lambda w: -held[w])[:q.threads]
    candidates += [w for w in sorted(live, key=placer.active) if w not in candidates][:q.threads]
    count: dict[str, int] = {}
    picks: list[Pick] = []
    for _ in range(q.threads):
        def cost(w: str) -> float:
            have = prompt if count.get(w) else held[w]  # a thread placed there before brought the prompt
            return placer.cost(w, prompt, have, extra=count.get(w, 0))
        best = min(candidates, key=lambda w: (cost(w), -held[w], placer.workers.index(w)))
        count[best] = count.get(best, 0) + 1
        picks.append(Pick(best, count[best], prompt - held[best]))
    return picks
