"""The worker half of Loom's KV connector: serves held blocks to pullers and pulls blocks from
holders, over a pair group per peer (transport.py), in background threads so that no engine step
waits on a peer. An engine over several GPUs has one worker half per tensor-parallel rank, each
moving its own shard of the blocks (its KV heads) with the same rank of the peer.

Blocks move as opaque pages: both engines run the same model, dtype, block size and attention
backend, so a block's bytes in every layer mean the same on both. The staged tensor is
``[layers, *one layer's blocks selected]``, gathered and scattered along the layer tensor's block
dimension (0 for vLLM-CPU's ``[blocks, heads, block, 2*head]``, 1 for ``[2, blocks, ...]``).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import torch

from orchestrator.protocol.kv import KVHold, PullReport
from workers.kv.messages import Connect, Pull, Release, Reply
from workers.kv.scheduler_side import PullSpec, StepPlan
from workers.kv.transport import Deadline, PairGroups, SideChannel, TransferError, backend_for, notify, request

log = logging.getLogger(__name__)

JOIN_GRACE_S = 2.0  # a Pull may overtake the holder's end of a new group's rendezvous
MAX_CLOSED = 100_000  # transfer ids remembered as closed, so a late Pull is refused


@dataclass
class BlockPages:
    """This engine's KV cache as the transport sees it: per-layer tensors and their block dim."""

    layers: list[torch.Tensor]
    block_dim: int

    @classmethod
    def of(cls, kv_caches: dict[str, torch.Tensor], num_blocks: int) -> BlockPages:
        layers = [kv_caches[name] for name in sorted(kv_caches)]
        dim = 0 if layers[0].shape[0] == num_blocks else 1
        return cls(layers, dim)

    def gather(self, block_ids: list[int]) -> torch.Tensor:
        ids = torch.tensor(block_ids, dtype=torch.long, device=self.layers[0].device)
        return torch.stack([layer.index_select(self.block_dim, ids) for layer in self.layers])

    def scatter(self, block_ids: list[int], staged: torch.Tensor) -> None:
        ids = torch.tensor(block_ids, dtype=torch.long, device=self.layers[0].device)
        for layer, pages in zip(self.layers, staged):
            layer.index_copy_(self.block_dim, ids, pages)

    def enter_thread(self) -> None:
        """A transfer thread works on the cache's device (CUDA: its own device index)."""
        device = self.layers[0].device
        if device.type == "cuda":
            torch.cuda.set_device(device)

    def synchronize(self) -> None:
        """Waits for this thread's copies (CUDA runs them asynchronously; CPU has nothing to wait)."""
        device = self.layers[0].device
        if device.type == "cuda":
            torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TPRank:
    """Which tensor-parallel rank of its engine this worker half is, of how many. Rank i holds
    shard i of every block (its KV heads), and pulls it from rank i of the holder."""

    rank: int = 0
    size: int = 1

    def fits(self, hold: KVHold) -> bool:
        """The holder's engine has as many ranks as this one (else its shards are not ours)."""
        return len(hold.ports) == self.size

    def port_of(self, hold: KVHold) -> int:
        """The side channel of this rank's counterpart in the holder."""
        if not self.fits(hold):
            raise TransferError(f"holder {hold.holder} has {len(hold.ports)} tensor-parallel ranks, "
                                f"this engine {self.size}")
        return hold.ports[self.rank]


@dataclass(frozen=True)
class HolderRank:
    """The holder's rank this worker half pulls from: the holder, its host, that rank's side channel."""

    holder: str
    host: str
    port: int


@dataclass
class Holds:
    """The holder's transfers: held (deadline known), being sent, and closed (sent, released or
    expired: reported done once, and never served again)."""

    held: dict[str, float] = field(default_factory=dict)  # transfer -> monotonic deadline
    busy: set[str] = field(default_factory=set)
    closed: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, plan_holds: dict[str, float], now: float) -> None:
        with self.lock:
            for rid, ttl in plan_holds.items():
                self.held.setdefault(rid, now + ttl)

    def claim(self, rid: str) -> bool:
        """Marks ``rid`` as being sent; False if it was closed (its blocks may be reused)."""
        with self.lock:
            if rid in self.closed:
                return False
            self.busy.add(rid)
            return True

    def close(self, rid: str) -> None:
        with self.lock:
            self.busy.discard(rid)
            self.closed[rid] = None
            while len(self.closed) > MAX_CLOSED:
                self.closed.popitem(last=False)

    def release(self, rid: str) -> None:
        with self.lock:
            if rid not in self.busy:
                self.closed[rid] = None

    def done(self, now: float) -> set[str]:
        """Held transfers now closed, expired ones included; each reported once."""
        with self.lock:
            for rid, deadline in self.held.items():
                if now > deadline and rid not in self.busy and rid not in self.closed:
                    log.info("KV hold %s expired unpulled; freeing its blocks", rid)
                    self.closed[rid] = None
            out = {rid for rid in self.held if rid in self.closed}
            for rid in out:
                del self.held[rid]
            return out


class WorkerSide:
    def __init__(self, host: str, timeout_s: float, rank: TPRank = TPRank()):
        self.host = host
        self.timeout_s = timeout_s
        self.rank = rank
        self.pages: BlockPages | None = None
        self.holds = Holds()
        self.groups = PairGroups(host, timeout_s)
        self.to_holder: dict[HolderRank, str] = {}  # our group with each holder's rank
        self.tags: dict[str, int] = {}
        # the puller's and the holder's work in pools of their own: a pull waits (up to its timeout)
        # on a peer's join or send, and that peer may be pulling from this engine at the same time;
        # with one pool for both, each side's waiting pulls could hold the threads its joins and
        # sends need, and every pull time out
        self.pulling = ThreadPoolExecutor(max_workers=4, thread_name_prefix="loom-kv-pull")
        self.serving = ThreadPoolExecutor(max_workers=4, thread_name_prefix="loom-kv-send")
        self.joining = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loom-kv-join")
        self.lock = threading.Lock()
        self.opening = threading.Lock()  # one new group at a time (concurrent pulls share it)
        self.received: set[str] = set()  # pulls ended (well or not) since the last report
        self.failed_blocks: set[int] = set()
        self.reports: list[dict] = []
        self.channel: SideChannel | None = None

    def register(self, kv_caches: dict[str, torch.Tensor], num_blocks: int) -> None:
        self.pages = BlockPages.of(kv_caches, num_blocks)
        self.backend = backend_for(self.pages.layers[0].device)
        self.channel = SideChannel(self.host, 0, self.handle)  # a free port, told via the handshake

    # -- the step, as vLLM drives it
    def start(self, plan: StepPlan) -> None:
        self.holds.add(plan.holds, time.monotonic())
        for spec in plan.pulls:  # each pull ends (well or not) within timeout_s of being asked for
            self.pulling.submit(self._pull, spec, Deadline.after(self.timeout_s))
        for hold in plan.releases:
            if self.rank.fits(hold):  # else (a holder of another size) the hold expires
                self.pulling.submit(notify, hold.host, self.rank.port_of(hold), Release(hold.transfer), self.timeout_s)

    def finished(self) -> tuple[set[str], set[str]]:
        with self.lock:
            received, self.received = self.received, set()
        return self.holds.done(time.monotonic()), received

    def load_errors(self) -> set[int]:
        with self.lock:
            failed, self.failed_blocks = self.failed_blocks, set()
        return failed

    def take_reports(self) -> list[dict]:
        with self.lock:
            reports, self.reports = self.reports, []
        return reports

    # -- the holder's side
    def handle(self, msg) -> Reply:
        if isinstance(msg, Connect):
            self.joining.submit(self.groups.join, msg)
            return Reply(True)
        if isinstance(msg, Release):
            self.holds.release(msg.transfer)
            return Reply(True)
        if isinstance(msg, Pull):
            return self._serve(msg)
        return Reply(False, f"unexpected {type(msg).__name__}")

    def _serve(self, msg: Pull) -> Reply:
        group = self.groups.wait_for(msg.group, JOIN_GRACE_S)
        if group is None:
            return Reply(False, f"no pair group {msg.group}")
        if not self.holds.claim(msg.transfer):
            return Reply(False, f"hold {msg.transfer} expired or was released")
        self.pages.enter_thread()
        staged = self.pages.gather(msg.block_ids)
        self.pages.synchronize()
        self.serving.submit(self._send, msg, group, staged)
        return Reply(True, shape=list(staged.shape), dtype=str(staged.dtype).removeprefix("torch."))

    def _send(self, msg: Pull, group, staged: torch.Tensor) -> None:
        self.pages.enter_thread()
        try:
            group.send(staged, 0, msg.tag, self.timeout_s)
        except Exception as e:  # noqa: BLE001 - the puller recomputes; the pair is rebuilt next time
            log.warning("KV send of %s failed: %s", msg.transfer, e)
            self.groups.drop(msg.group)
        finally:
            self.holds.close(msg.transfer)

    # -- the puller's side
    def _pull(self, spec: PullSpec, deadline: Deadline) -> None:
        hold, err = spec.hold, ""
        nbytes = 0
        self.pages.enter_thread()
        try:
            nbytes = self._receive(hold, spec, deadline)
        except Exception as e:  # noqa: BLE001 - any failure: vLLM recomputes these blocks
            err = f"{type(e).__name__}: {e}"
            log.warning("KV pull of %s from %s failed: %s", hold.transfer, hold.holder, err)
        with self.lock:
            if err:
                self.failed_blocks.update(spec.local_block_ids)
            self.reports.append({"request_id": spec.request_id, **asdict(PullReport(
                hold.holder, len(spec.local_block_ids), nbytes, deadline.elapsed() * 1000, not err, err))})
            self.received.add(spec.request_id)

    def _receive(self, hold: KVHold, spec: PullSpec, deadline: Deadline) -> int:
        peer = HolderRank(hold.holder, hold.host, self.rank.port_of(hold))
        key = self._group_with(peer, deadline)
        with self.lock:
            tag = self.tags[key] = self.tags.get(key, 0) + 1
        reply = request(peer.host, peer.port, Pull(hold.transfer, spec.remote_block_ids, key, tag), deadline.left())
        if not reply.ok:
            raise TransferError(reply.error)
        staged = torch.empty(reply.shape, dtype=getattr(torch, reply.dtype), device=self.pages.layers[0].device)
        try:
            self.groups.get(key).recv(staged, 1, tag, deadline.left())
        except Exception:
            self._forget(peer, key)
            raise
        self.pages.scatter(spec.local_block_ids, staged)
        self.pages.synchronize()  # written before vLLM is told the blocks are ready
        return staged.numel() * staged.element_size()

    def _group_with(self, peer: HolderRank, deadline: Deadline) -> str:
        """Our pair group with ``peer``, built if there is none."""
        if not self.opening.acquire(timeout=deadline.left()):  # another pull is building a group
            raise TransferError("the transfer's deadline passed waiting to build a pair group")
        try:
            key = self.to_holder.get(peer)
            if key is None or self.groups.get(key) is None:
                key = self.groups.open_to(peer.host, peer.port, peer.holder, self.backend, deadline)
                self.to_holder[peer] = key
        finally:
            self.opening.release()
        return key

    def _forget(self, peer: HolderRank, key: str) -> None:
        with self.opening:
            self.to_holder.pop(peer, None)
        self.groups.drop(key)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        for pool in (self.pulling, self.serving, self.joining):
            pool.shutdown(wait=False, cancel_futures=True)
        self.groups.close()
