"""The placement cost model (orchestrator/routing/placement.py), case by case: exact choices from known
holdings, loads and engine profiles (numbers of the order measured on this project's CPU)."""
from __future__ import annotations

import pytest

from orchestrator.protocol.engine import EngineLoad, EngineProfile
from orchestrator.routing.link import LinkModel
from orchestrator.routing.placement import Placer

CPU = EngineProfile(prefill_s_per_token=1.1e-4, decode_step_s={1: 0.0046, 4: 0.0056, 16: 0.0073})
# A GPU-like engine: a batch of up to 16 is nearly free, past it the step grows.
FLAT = EngineProfile(prefill_s_per_token=2e-4, decode_step_s={1: 0.010, 16: 0.011, 64: 0.040})


class Holdings:
    def __init__(self, held: dict[str, int]):
        self.held = held

    def matched(self, ids, workers):
        return {w: min(self.held.get(w, 0), len(ids)) for w in workers}


def placer(held: dict[str, int], active: dict[str, int], profile=CPU, expected=64.0) -> Placer:
    p = Placer(["w0", "w1"], Holdings(held), {"w0": profile, "w1": profile}, expected_tokens=expected)
    for w, a in active.items():
        p.report(w, EngineLoad(active=a))
    return p


PROMPT = list(range(320))


@pytest.mark.parametrize("case,profile,held,active,chosen", [
    ("idle engines: the holder", CPU, {"w0": 320}, {}, "w0"),
    ("the holder, though it is busier, where batching is nearly free", FLAT, {"w1": 320}, {"w0": 0, "w1": 4}, "w1"),
    ("an idle engine, where each sequence slows the batch and the prefix is short", CPU, {"w1": 320},
     {"w0": 0, "w1": 4}, "w0"),
    ("nobody holds it: the less loaded", CPU, {}, {"w0": 3, "w1": 1}, "w1"),
    # SGLang's router failure: a miss sent to the overloaded worker. The miss costs the same
    # prefill anywhere, so the load decides.
    ("a miss never goes to the overloaded worker", FLAT, {}, {"w0": 40, "w1": 2}, "w1"),
    ("more held wins when loads are equal", CPU, {"w0": 96, "w1": 288}, {"w0": 2, "w1": 2}, "w1"),
    ("ties go to the first worker", CPU, {"w0": 320, "w1": 320}, {}, "w0"),
])
def test_choices(case, profile, held, active, chosen):
    assert placer(held, active, profile=profile).place(PROMPT).worker == chosen, case


def test_a_saturated_holder_loses_the_request_once_recomputing_is_cheaper():
    p = placer({"w0": 320}, {"w0": 48, "w1": 0}, profile=FLAT, expected=200)
    placed = p.place(PROMPT)
    assert placed.worker == "w1" and placed.matched_tokens == 0
    assert placed.decided_ms > 0 and placed.decided_ms == round(p.decision_s[-1] * 1000, 3)  # the record says it
    assert 0 <= placed.decided_cpu_ms
    assert placed.costs["w1"] < placed.costs["w0"] and "holder busy" in placed.reason
    light = placer({"w0": 320}, {"w0": 1, "w1": 0}, profile=FLAT, expected=200).place(PROMPT)
    assert light.worker == "w0" and light.reason == "holds the most of the prompt"


def test_a_fork_stays_together_when_the_prefix_would_be_recomputed():
    p = placer({"w0": 320}, {}, profile=FLAT)
    chosen = []
    for _ in range(4):  # four threads of one fork, placed one after the other
        placed = p.place(PROMPT + [1, 2])
        p.started(placed.worker)
        chosen.append(placed.worker)
    assert chosen == ["w0"] * 4


def test_requests_sent_since_the_last_report_count_as_load_until_the_next():
    p = placer({}, {"w0": 0, "w1": 0})
    p.started("w0")
    assert p.active("w0") == 1 and p.place(PROMPT).worker == "w1"
    p.report("w0", EngineLoad(active=0))
    assert p.active("w0") == 0 and p.place(PROMPT).worker == "w0"


def test_a_report_counts_only_what_was_sent_before_it_was_asked_for():
    """Requests sent while a report is on its way are not in it, and still count as load after it."""
    p = placer({}, {"w0": 0, "w1": 0})
    p.started("w0")
    asked_at = p.sent["w0"]  # the refresh asks now; two more go out before the answer
    p.started("w0")
    p.started("w0")
    p.report("w0", EngineLoad(active=1), sent_before=asked_at)
    assert p.active("w0") == 3


def test_a_request_that_ended_since_the_last_report_no_longer_counts():
    """The last report saw the holder busy with a request of ours that has ended since: the
    holder is idle again, so a fork's first thread goes to it, not to a peer."""
    p = placer({"w0": 320}, {"w0": 1, "w1": 0})
    assert p.place(PROMPT).worker == "w1"
    p.finished("w0", 64)
    assert p.active("w0") == 0 and p.place(PROMPT).worker == "w0"


def test_expected_output_follows_what_requests_generated():
    p = placer({}, {})
    for _ in range(10):
        p.started("w0")
        p.finished("w0", 200)
    assert p.expected_tokens == pytest.approx(200, rel=1e-6)


def test_decode_step_interpolates_between_and_extends_beyond_measured_points():
    assert CPU.step_s(1) == 0.0046 and CPU.step_s(16) == 0.0073
    assert CPU.step_s(10) == pytest.approx(0.0056 + (0.0073 - 0.0056) * 6 / 12)
    assert CPU.step_s(28) == pytest.approx(0.0073 + (0.0073 - 0.0056) * 12 / 12)


def with_link(p: Placer, gbps: float, fixed_s: float = 0.005, bytes_per_token: int = 6144) -> Placer:
    p.set_link(LinkModel(bytes_per_s=gbps * 1e9, fixed_s=fixed_s,
                         bytes_per_token={"w0": bytes_per_token, "w1": bytes_per_token}))
    return p


def test_a_busy_holder_lends_its_prefix_when_moving_it_beats_recomputing():
    """The case where recomputing elsewhere was chosen before: with a fast link, the thread goes
    to the idle engine and pulls the prefix instead, and says so."""
    p = with_link(placer({"w0": 320}, {"w0": 48, "w1": 0}, profile=FLAT, expected=200), gbps=1.0)
    placed = p.place(PROMPT)
    assert (placed.worker, placed.source, placed.pull_tokens) == ("w1", "w0", 320)
    assert placed.pull_costs["w1"] < placed.costs["w1"] and placed.pull_costs["w1"] < placed.costs["w0"]
    assert placed.reason.startswith("pulls 320 prompt tokens from w0")


def test_a_slow_link_recomputes_instead():
    p = with_link(placer({"w0": 320}, {"w0": 48, "w1": 0}, profile=FLAT, expected=200), gbps=1e-4)
    placed = p.place(PROMPT)
    assert placed.worker == "w1" and placed.source == "" and placed.pull_costs["w1"] > placed.costs["w1"]
    assert "recomputing 320 held tokens here" in placed.reason and "beats pulling them" in placed.reason


def test_an_idle_holder_keeps_its_thread_and_nobody_pulls_what_nobody_holds():
    assert with_link(placer({"w0": 320}, {}), gbps=100.0).place(PROMPT).source == ""
    placed = with_link(placer({}, {"w0": 3}), gbps=100.0).place(PROMPT)
    assert placed.source == "" and placed.pull_costs == {}


def test_only_the_missing_tokens_are_pulled():
    p = with_link(placer({"w0": 320, "w1": 96}, {"w0": 48, "w1": 0}, profile=FLAT, expected=200), gbps=1.0)
    placed = p.place(PROMPT)
    assert (placed.worker, placed.source, placed.pull_tokens) == ("w1", "w0", 224)


def test_the_link_model_separates_the_fixed_cost_from_the_bandwidth():
    link = LinkModel(bytes_per_s=1e9, fixed_s=0.1, bytes_per_token={"w1": 1000})
    link.observe(nbytes=1_000_000, seconds=0.012)
    assert link.bytes_per_s == 1e9 and link.fixed_s == pytest.approx(0.011)  # one size: the fixed part only
    for k in range(100):  # 8 ms fixed + 0.5 GB/s, sizes from 0.2 to 6 MB
        nbytes = 200_000 * (1 + k % 30)
        link.observe(nbytes=nbytes, seconds=0.008 + nbytes / 5e8)
    assert link.bytes_per_s == pytest.approx(5e8, rel=1e-6) and link.fixed_s == pytest.approx(0.008, rel=1e-6)
    assert link.transfer_s("w1", 100) == pytest.approx(0.008 + 100 * 1000 / 5e8)
    assert len(link.samples) == link.window


def test_a_link_model_with_no_window_stays_as_set():
    link = LinkModel(bytes_per_s=1e13, fixed_s=0.0, window=0)
    link.observe(nbytes=1000, seconds=5.0)
    assert (link.bytes_per_s, link.fixed_s) == (1e13, 0.0)
