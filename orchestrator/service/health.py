"""What ``/healthz`` says, from what each worker and the coordinator answered. Plain Python:
the Ray calls that gather the answers live at the edge (cluster/app.py).

- ``ok``: the coordinator and every worker answered and are well;
- ``degraded``: the coordinator and at least one worker are well, others are not (jobs still
  run, on the live workers);
- ``unavailable``: no worker is well, or the coordinator did not answer: the service cannot
  take work, and the HTTP status is 503 so that a load balancer or Kubernetes sees it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

WELL = "ok"


@dataclass
class Health:
    status: str  # ok | degraded | unavailable
    workers: dict[str, dict] = field(default_factory=dict)  # name -> {"state": ok|errored|dead|..., ...}
    coordinator: dict = field(default_factory=dict)  # {"state": ..., plus its cluster view}
    model: str = ""
    replica: str = ""  # the ingress replica (its placer, host:pid) that answered

    @property
    def can_take_work(self) -> bool:
        return self.status != "unavailable"

    def to_json(self) -> dict:
        return {"status": self.status, "model": self.model, "replica": self.replica, "workers": self.workers,
                "coordinator": self.coordinator}


def assess(workers: dict[str, dict], coordinator: dict, model: str = "", replica: str = "") -> Health:
    live = [name for name, w in workers.items() if w.get("state") == WELL]
    if coordinator.get("state") != WELL or not live:
        status = "unavailable"
    else:
        status = "ok" if len(live) == len(workers) else "degraded"
    return Health(status, workers, coordinator, model, replica)
