"""/healthz's verdict from what the workers and the coordinator answered (orchestrator/service/health.py)."""
import pytest

from orchestrator.service.health import assess

OK, DEAD = {"state": "ok"}, {"state": "dead", "error": "ActorDiedError"}


@pytest.mark.parametrize("workers,coordinator,status", [
    ({"w0": OK, "w1": OK}, OK, "ok"),
    ({"w0": OK, "w1": DEAD}, OK, "degraded"),
    ({"w0": {"state": "errored"}, "w1": {"state": "unresponsive"}}, OK, "unavailable"),
    ({"w0": OK}, DEAD, "unavailable"),
    ({}, OK, "unavailable"),
])
def test_status_says_whether_work_can_be_taken(workers, coordinator, status):
    health = assess(workers, coordinator, "m")
    assert health.status == status and health.can_take_work == (status != "unavailable")
    assert health.to_json() == {"status": status, "model": "m", "replica": "", "workers": workers,
                                "coordinator": coordinator}
