"""``LoomConnector``: Loom's vLLM KV connector, loaded by module path (no vLLM fork)::

    KVTransferConfig(kv_connector="LoomConnector", kv_connector_module_path="workers.kv.connector",
                     kv_role="kv_both", kv_load_failure_policy="recompute",
                     kv_connector_extra_config={"name": ..., "host": ..., "hold_s": 30,
                                                "timeout_s": 10})

Each worker half (one per tensor-parallel rank) binds its side channel on a free port of
``host`` and tells the scheduler half through vLLM's handshake metadata (as the NixlConnector
does), so no port is chosen ahead; a ``KVHold`` carries every rank's port, and rank i of the
puller pulls rank i's shard from rank i of the holder (both engines have the same size).

A shim: vLLM's connector API on one side, ``SchedulerSide`` (scheduler_side.py) and
``WorkerSide`` (worker_side.py) on the other; messages.py has the protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorHandshakeMetadata,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats
from vllm.v1.request import RequestStatus

from workers.kv.scheduler_side import HolderAddress, SchedulerSide, StepPlan
from workers.kv.worker_side import TPRank, WorkerSide


@dataclass
class SideChannelAddress(KVConnectorHandshakeMetadata):
    host: str
    port: int


@dataclass
class LoomConnectorMeta(KVConnectorMetadata):
    plan: StepPlan


@dataclass
class LoomKVStats(KVConnectorStats):
    """Finished pulls since the last report (``data["pulls"]``: a ``PullReport`` and the vLLM
    request id each). vLLM carries them from the worker half to the front end's stat loggers
    with every step, where ``VLLMEngine`` hands each to its request's last chunk (the request's
    own output cannot carry it: one ended by a stop string is aborted in the engine)."""

    data: dict[str, Any] = field(default_factory=lambda: {"pulls": []})

    def reset(self):
        self.data = {"pulls": []}

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        self.data["pulls"] = self.data.get("pulls", []) + list(other.data.get("pulls", []))
        return self

    def reduce(self) -> dict[str, int | float]:
        pulls = self.data.get("pulls", [])
        return {"pulls": len(pulls), "failed": sum(not p["ok"] for p in pulls),
                "bytes": sum(p["bytes"] for p in pulls), "ms": round(sum(p["ms"] for p in pulls), 3)}

    def is_empty(self) -> bool:
        return not self.data.get("pulls")


class LoomConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config
        me = HolderAddress(str(extra["name"]), str(extra["host"]))  # ports: from the worker halves
        ranks = vllm_config.parallel_config.tensor_parallel_size
        self.num_blocks = kv_cache_config.num_blocks
        self.sched: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            group = kv_cache_config.kv_cache_groups[0]
            spec = group.kv_cache_spec  # one rank's pages
            self.sched = SchedulerSide(me, spec.block_size, spec.page_size_bytes * len(group.layer_names) * ranks,
                                       float(extra.get("hold_s", 30.0)))
        else:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            self.worker = WorkerSide(me.host, float(extra.get("timeout_s", 10.0)),
                                     TPRank(get_tensor_model_parallel_rank(), ranks))

    # -- scheduler side
    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> tuple[int | None, bool]:
        return self.sched.matched(request, num_computed_tokens)

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        self.sched.after_alloc(request, blocks, num_external_tokens)

    def set_xfer_handshake_metadata(self, metadata: dict[int, KVConnectorHandshakeMetadata]) -> None:
        """Every tensor-parallel rank's side channel, in rank order."""
        self.sched.me.ports = [metadata[rank].port for rank in sorted(metadata)]

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        return LoomConnectorMeta(self.sched.step_plan())

    def request_finished(self, request, block_ids: list[int]) -> tuple[bool, dict | None]:
        normal = request.status in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)
        return self.sched.finished(request, block_ids, normal)

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KVConnectorStats | None:
        return LoomKVStats(data=data) if data is not None else LoomKVStats()

    # -- worker side
    def register_kv_caches(self, kv_caches) -> None:
        self.worker.register(kv_caches, self.num_blocks)

    def get_handshake_metadata(self) -> KVConnectorHandshakeMetadata | None:
        return SideChannelAddress(self.worker.host, self.worker.channel.port)

    def start_load_kv(self, forward_context, **kwargs) -> None:
        meta = self._get_connector_metadata()
        if isinstance(meta, LoomConnectorMeta):
            self.worker.start(meta.plan)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None  # loads are asynchronous: the request waits in WAITING_FOR_REMOTE_KVS

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs) -> None:
        return None  # nothing is pushed: holders keep blocks, targets pull

    def wait_for_save(self) -> None:
        return None

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        sent, received = self.worker.finished()
        return sent or None, received or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.worker.load_errors()

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        if self.worker is None:
            return None
        pulls = self.worker.take_reports()
        return LoomKVStats(data={"pulls": pulls}) if pulls else None

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.close()
