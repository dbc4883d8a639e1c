"""What one worker holds on the cluster: its GPUs (one per tensor-parallel rank), CPUs and custom
resources, reserved as one Ray placement group bundle, so that every rank of its engine lands on
one node and a worker restarted by Ray (a dead engine) finds its GPUs still its own.

The group is detached like the worker, and made by the process that makes the worker. Processes
starting Loom at once (ingress replicas, a Ray Job) may each reserve for a worker that only one
of them creates: the others see that the worker runs in another group and release theirs
(``keep_if_used``). Named groups cannot do this: Ray scopes their names by the job's namespace,
and Serve's replicas and a Ray Job's driver run in different ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

RESERVE_TIMEOUT_S = 600.0  # a reservation the cluster cannot grant in this long is an error


class ReservationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Reservation:
    """One worker's share of the cluster, reserved as one bundle when it holds anything."""

    worker: str
    gpus: float = 0.0
    cpus: float = 0.0
    custom: dict = field(default_factory=dict)

    def bundle(self) -> dict:
        return {k: v for k, v in {"GPU": self.gpus, "CPU": self.cpus, **self.custom}.items() if v}

    def reserve(self) -> PlacementGroup | None:
        """A new placement group of the bundle, once the cluster granted it (None: nothing to reserve)."""
        if not self.bundle():
            return None
        group = placement_group([self.bundle()], strategy="STRICT_PACK", lifetime="detached")
        if not group.wait(RESERVE_TIMEOUT_S):
            remove_placement_group(group)
            raise ReservationError(f"worker {self.worker}: the cluster did not grant {self.bundle()} "
                                   f"within {RESERVE_TIMEOUT_S:.0f} s (no node has them free)")
        return group

    def actor_options(self, group: PlacementGroup | None) -> dict:
        """Ray's options for the worker's actor, in ``group`` when there is one."""
        options = {"num_gpus": self.gpus, "num_cpus": self.cpus, "resources": dict(self.custom) or None}
        if group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
        return options


def keep_if_used(group: PlacementGroup | None, used_by_worker: str | None) -> None:
    """Releases ``group`` unless the worker runs in it (``used_by_worker``: the id of the group the
    worker runs in, from the worker itself)."""
    if group is not None and group.id.hex() != used_by_worker:
        remove_placement_group(group)


def release(group_id: str | None) -> None:
    """Releases a stopped worker's group, by the id the worker reported."""
    if group_id:
        from ray import PlacementGroupID

        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group_id)))
