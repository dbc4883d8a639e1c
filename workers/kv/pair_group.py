"""A two-rank torch.distributed process group of Loom's own, for one (puller, holder) engine pair.

Built on a TCP store the puller serves, without touching torch's default group, as vLLM's
``stateless_init_torch_distributed_process_group`` builds one (vLLM 0.32,
``vllm/distributed/utils.py``, Apache-2.0): so the transport needs torch alone, and runs and is
tested where vLLM is not installed. The backend follows the KV cache's device: gloo for CPU
tensors, NCCL for CUDA ones.

Every send and receive ends within its deadline, whatever the peer does:
- gloo takes the deadline itself: a peer that died closes its socket (the op fails at once), a
  peer that hangs times out;
- an NCCL op is polled until it completes or the deadline passes; then the group's communicator
  is aborted and the op fails. NOTE: PyTorch's NCCL watchdog tears the whole process down when an
  op fails or times out (TORCH_NCCL_ASYNC_ERROR_HANDLING, 3 by default): in Loom the process is a
  vLLM engine serving other requests, so these groups are built with that handling off (0), which
  leaves ending a stuck op to the poll and the abort here.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch.distributed import ProcessGroup, TCPStore
from torch.distributed.distributed_c10d import PrefixStore

NCCL_POLL_S = 0.0005


class PairTimeout(TimeoutError):
    """An op of the pair did not complete within its deadline (the peer died or hangs)."""


@dataclass
class PairGroup:
    pg: ProcessGroup
    backend: str  # gloo | nccl
    store: TCPStore  # kept alive with the group (the puller's serves it)

    def send(self, tensor: torch.Tensor, dst: int, tag: int, timeout_s: float) -> None:
        self._finish(self.pg.send([tensor], dst, tag), timeout_s)

    def recv(self, tensor: torch.Tensor, src: int, tag: int, timeout_s: float) -> None:
        self._finish(self.pg.recv([tensor], src, tag), timeout_s)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken pair may fail to shut down; it is dropped either way
            self.pg.shutdown()

    def _finish(self, work, timeout_s: float) -> None:
        if self.backend == "gloo":
            work.wait(timedelta(seconds=timeout_s))
            return
        deadline = time.monotonic() + timeout_s
        while not work.is_completed():
            if time.monotonic() > deadline:
                self.abort()
                raise PairTimeout(f"NCCL op not done in {timeout_s:.1f} s: the pair's communicator was aborted")
            time.sleep(NCCL_POLL_S)
        work.wait()  # raises if the op failed

    def abort(self) -> None:
        """Aborts the NCCL communicator, so that a stuck op ends (its kernel exits with an error)."""
        backend = self.pg._get_backend(torch.device("cuda"))
        with contextlib.suppress(Exception):
            backend.abort()


def build(host: str, port: int, rank: int, backend: str, timeout_s: float,
          listen: socket.socket | None = None, local: str | None = None) -> PairGroup:
    """One side of the pair; blocks until the other side joins (or the store times out). Rank 0
    serves the store on ``listen`` (bound and listening on ``host:port``); ``local`` is the
    address this side is reached at (gloo binds there)."""
    timeout = timedelta(seconds=timeout_s)
    if listen is not None:
        store = TCPStore(host, port, world_size=2, is_master=True, timeout=timeout,
                         master_listen_fd=listen.detach(), multi_tenant=True)
    else:
        store = TCPStore(host, port, world_size=2, is_master=False, timeout=timeout)
    prefix = PrefixStore(f"loom-kv/{host}:{port}", store)
    pg = ProcessGroup(prefix, rank, 2)
    if backend == "gloo":
        impl, kind, device = _gloo(prefix, rank, timeout, local), ProcessGroup.BackendType.GLOO, "cpu"
    else:
        impl, kind, device = _nccl(prefix, rank, timeout), ProcessGroup.BackendType.NCCL, "cuda"
    pg._set_default_backend(kind)
    impl._set_sequence_number_for_group()
    pg._register_backend(torch.device(device), kind, impl)
    return PairGroup(pg, backend, store)


def _gloo(prefix: PrefixStore, rank: int, timeout: timedelta, address: str | None):
    """Gloo on the address this side's peer reaches it at (its worker's node address). NOTE: left to
    itself gloo binds to the address the machine's hostname resolves to, which a peer on another
    network (a second node, a pod network) may not reach."""
    from torch.distributed.distributed_c10d import ProcessGroupGloo

    opts = ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [ProcessGroupGloo.create_device(hostname=address) if address
                     else ProcessGroupGloo.create_default_device()]
    return ProcessGroupGloo(prefix, rank, 2, opts)


def _nccl(prefix: PrefixStore, rank: int, timeout: timedelta):
    from torch.distributed.distributed_c10d import ProcessGroupNCCL

    opts = ProcessGroupNCCL.Options()
    opts._timeout = timeout
    with _env("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0"):  # read when the group is built: this group only
        return ProcessGroupNCCL(prefix, rank, 2, opts)


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
