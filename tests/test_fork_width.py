"""How wide a fork runs (orchestrator/routing/fork_width.py), case by case: exact choices from known
holdings, loads and engine profiles (a CPU engine's of the order measured on this project's VM, a
GPU engine's from the published H100 figures the simulator's profile cites)."""
from __future__ import annotations

import pytest

from orchestrator.protocol.engine import EngineLoad, EngineProfile
from orchestrator.protocol.fork import ForkPolicy, ForkQuery
from orchestrator.routing.fork_width import advise, greedy_picks
from orchestrator.routing.placement import Placer

# a request costs more than a decode step; each sequence slows the step little
CPU = EngineProfile(1.1e-4, {1: 0.0046, 4: 0.0056, 16: 0.0073}, request_s=0.006, max_seqs=64)
# decode steps long beside a request's prefill (vLLM, Qwen3-8B, H100: 9.7 / 16.9 / 26.6 ms)
GPU = EngineProfile(6e-5, {8: 0.0097, 32: 0.0169, 64: 0.0266}, request_s=0.002, max_seqs=64)
CONTEXT = 300
QUERY = ForkQuery(list(range(CONTEXT + 5)), threads=4, header_tokens=5, policy=ForkPolicy.ADAPTIVE)


class Holdings:
    def __init__(self, held: dict[str, int]):
        self.held = held

    def matched(self, ids, workers):
        return {w: min(self.held.get(w, 0), len(ids)) for w in workers}


def placer(active: dict[str, int], profile: EngineProfile, expected: float = 64.0) -> Placer:
    workers = sorted(active)
    p = Placer(workers, Holdings({"w0": CONTEXT}), {w: profile for w in workers}, expected_tokens=expected)
    for w, a in active.items():
        p.report(w, EngineLoad(active=a))
    return p


@pytest.mark.parametrize("case,profile,tokens,load,width", [
    ("an idle CPU engine: every thread at once", CPU, 64, 0, 4),
    ("a CPU engine past its slots: still every thread (they hold more of its slots)", CPU, 64, 96, 4),
    ("threads of 8 tokens on an idle engine: every thread", CPU, 8, 0, 4),
    ("threads of 8 tokens beside 32 others: refused (prefill costs the others more than overlap saves)",
     CPU, 8, 32, 0),
    ("an idle GPU engine: every thread", GPU, 1000, 0, 4),
    ("a GPU engine past its slots: every thread", GPU, 1000, 96, 4),
    ("threads of 8 tokens beside 32 others on a GPU: every thread (its decode steps are long)", GPU, 8, 32, 4),
])
def test_one_engine(case, profile, tokens, load, width):
    advice = advise(placer({"w0": load}, profile, expected=tokens), QUERY)
    assert advice.width == width, case
    assert [e.width for e in advice.estimates] == [0, 1, 2, 3, 4]
    best = min(advice.estimates, key=lambda e: e.total_s)
    assert best.width == width and f"width {width} of 4" in advice.reason


def test_width_one_never_beats_refusing_without_a_target():
    """Waves of one pay every request's prefill and the join, and overlap nothing."""
    for load in (0, 16, 64, 200):
        est = advise(placer({"w0": load}, CPU), QUERY).estimates
        assert est[1].total_s > est[0].total_s


def test_threads_go_to_an_idle_worker_when_the_holder_is_saturated():
    p = placer({"w0": 200, "w1": 0}, CPU)
    picks = greedy_picks(p, QUERY, p.live(), p.index.matched(QUERY.prompt_ids, p.live()))
    assert {pick.worker for pick in picks} == {"w1"} and picks[0].miss == len(QUERY.prompt_ids)
    assert advise(p, QUERY).width == 4  # the idle worker takes them all, prefix recomputed once


def test_a_latency_target_widens_the_fork_and_a_lost_cause_gets_the_least_cost():
    p = placer({"w0": 32}, CPU, expected=8)
    least = advise(p, QUERY)
    assert least.width == 0
    job_s = {e.width: e.job_s for e in least.estimates}
    met = advise(p, ForkQuery(QUERY.prompt_ids, 4, 5, ForkPolicy.ADAPTIVE, target_left_s=job_s[2] + 0.001))
    assert met.width == 4 and "within its target" in met.reason  # 2 and 4 fit; 4 costs less in all
    lost = advise(p, ForkQuery(QUERY.prompt_ids, 4, 5, ForkPolicy.ADAPTIVE, target_left_s=job_s[4] / 2))
    assert lost.width == 0 and "no width meets its target" in lost.reason


@pytest.mark.parametrize("policy,width", [(ForkPolicy.NEVER, 0), (ForkPolicy.EAGER, 4)])
def test_never_and_eager_ignore_the_load(policy, width):
    advice = advise(placer({"w0": 32}, CPU, expected=8), ForkQuery(QUERY.prompt_ids, 4, 5, policy))
    assert advice.width == width and advice.estimates == [] and policy.value in advice.reason


def test_past_its_slots_a_sequence_waits_its_share():
    assert CPU.token_s(16) == CPU.step_s(16) and CPU.token_s(64) == CPU.step_s(64)
    assert CPU.token_s(128) == pytest.approx(2 * CPU.step_s(64))
    unbounded = EngineProfile(1e-4, {1: 0.01, 2: 0.02})
    assert unbounded.token_s(1000) == unbounded.step_s(1000)
