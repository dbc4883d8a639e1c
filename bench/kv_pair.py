"""Loom's KV transport alone, a holder and a puller process (torch and pyzmq only, no vLLM):
``python -m bench.kv_pair --device cpu|cuda [--sizes 1,8,64,256] [--reps 5]``.

The holder keeps KV caches shaped like an engine's (vLLM's layout ``[2, blocks, block, heads,
head]`` per layer; defaults: Qwen3-8B's 36 layers, 8 KV heads, head 128, block 16, bf16) and
serves pulls through ``workers.kv.worker_side.WorkerSide``; the puller pulls 1..N blocks through
its own ``WorkerSide`` and checks every byte. Then the same sizes over a bare pair group (the
link's own rate), and faults: a holder that accepts a pull and dies before sending, and one that
accepts and never sends. Prints one JSON line per phase, with the machine.

On one GPU the two processes get different ``NCCL_HOSTID``s (NCCL refuses two ranks on one
device), so NCCL carries the blocks over loopback sockets: set ``NCCL_SOCKET_IFNAME=lo
NCCL_IB_DISABLE=1``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import time
from dataclasses import asdict, dataclass

from bench.common import free_port, machine

DIE, HANG = "die", "hang"  # transfers the faulty holder fails on


@dataclass(frozen=True)
class Shape:
    layers: int = 36
    blocks: int = 300
    block: int = 16
    heads: int = 8
    head: int = 128
    dtype: str = "bfloat16"

    @property
    def block_bytes(self) -> int:
        import torch

        return self.layers * 2 * self.block * self.heads * self.head * torch.tensor([], dtype=self.torch_dtype).element_size()

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def caches(shape: Shape, device: str, seed: int) -> dict:
    """Per layer, a KV cache tensor; seed 0: zeros (a puller's fresh blocks)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed or 1)
    dims = (2, shape.blocks, shape.block, shape.heads, shape.head)
    return {f"model.layers.{i}.attn": (torch.randn(dims, generator=g, device=device).to(shape.torch_dtype) if seed
                                       else torch.zeros(dims, device=device, dtype=shape.torch_dtype))
            for i in range(shape.layers)}


def _faulty_side():
    from workers.kv.worker_side import WorkerSide

    class FaultyHolder(WorkerSide):
        """A holder that accepts a pull for ``die`` and dies before sending, and one for ``hang``
        and never sends; every other pull it serves."""

        def _send(self, msg, group, staged) -> None:
            if msg.transfer == DIE:
                os._exit(3)
            if msg.transfer == HANG:
                time.sleep(3600)
            super()._send(msg, group, staged)

    return FaultyHolder


def holder(shape: Shape, device: str, timeout_s: float, hostid: str, conn) -> None:
    os.environ["NCCL_HOSTID"] = hostid
    side = _faulty_side()("127.0.0.1", timeout_s)
    side.register(caches(shape, device, seed=1234), shape.blocks)
    conn.send(side.channel.port)
    conn.recv()  # until told to stop
    side.close()


@dataclass
class Pulled:
    ok: bool
    error: str
    seconds: float
    report_ms: float
    right: bool | None  # every byte equal to the holder's (None: not pulled)


class Puller:
    def __init__(self, shape: Shape, device: str, timeout_s: float):
        from workers.kv.worker_side import WorkerSide

        self.shape, self.device, self.timeout_s = shape, device, timeout_s
        self.expected = caches(shape, device, seed=1234)
        self.mine = caches(shape, device, seed=0)
        self.side = WorkerSide("127.0.0.1", timeout_s)
        self.side.register(self.mine, shape.blocks)
        self.rng = random.Random(7)

    def pull(self, port: int, transfer: str, n: int) -> Pulled:
        from orchestrator.protocol.kv import KVHold
        from workers.kv.scheduler_side import PullSpec, StepPlan

        remote, local = self.rng.sample(range(self.shape.blocks), n), self.rng.sample(range(self.shape.blocks), n)
        hold = KVHold("holder", "127.0.0.1", [port], transfer, remote, n * self.shape.block, self.shape.block_bytes, 900.0)
        t0 = time.perf_counter()
        self.side.start(StepPlan(pulls=[PullSpec(transfer, hold, remote, local)]))
        while transfer not in self.side.finished()[1]:
            if time.perf_counter() - t0 > self.timeout_s + 60:
                return Pulled(False, "no report", time.perf_counter() - t0, 0.0, None)
            time.sleep(0.0005)
        seconds = time.perf_counter() - t0
        report = next(r for r in self.side.take_reports() if r["request_id"] == transfer)
        return Pulled(report["ok"], report["error"], seconds, report["ms"],
                      self._same(remote, local) if report["ok"] else None)

    def _same(self, remote: list[int], local: list[int]) -> bool:
        import torch

        r, m = (torch.tensor(x, device=self.device) for x in (remote, local))
        return all(torch.equal(self.mine[k].index_select(1, m), self.expected[k].index_select(1, r)) for k in self.mine)


def start_holder(ctx, shape: Shape, device: str, timeout_s: float, hostid: str):
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=holder, args=(shape, device, timeout_s, hostid, theirs), daemon=True)
    proc.start()
    return proc, ours, ours.recv()


def pulls(puller: Puller, port: int, sizes: list[int], reps: int) -> list[dict]:
    rows = []
    for n in sizes:
        got = [puller.pull(port, f"t{n}-{r}", n) for r in range(reps + 1)]  # the first builds the pair
        ms = [g.report_ms for g in got[1:] if g.ok]
        median = statistics.median(ms) if ms else None
        rows.append({"blocks": n, "bytes": n * puller.shape.block_bytes, "first_ms": round(got[0].report_ms, 2),
                     "ms_median": round(median, 3) if median else None,
                     "gb_per_s": round(n * puller.shape.block_bytes / median / 1e6, 3) if median else None,
                     "all_right": all(g.right for g in got), "failed": sum(not g.ok for g in got)})
    return rows


def faults(ctx, puller: Puller, shape: Shape, device: str, timeout_s: float) -> dict:
    """A holder that dies after accepting a pull, one that hangs, one that cannot be reached;
    after each, a pull from a live holder (a pair built again)."""
    out = {}
    for fault in (DIE, HANG):
        proc, conn, port = start_holder(ctx, shape, device, timeout_s, f"loom-holder-{fault}")
        bad = puller.pull(port, fault, 2)
        again = puller.pull(port, f"after-{fault}", 2) if fault == HANG else None
        # (the puller is this process: that it lived is that the bench goes on)
        out[fault] = {"ok": bad.ok, "error": bad.error[:200], "seconds": round(bad.seconds, 3),
                      "next_pull_ok": again.ok if again else None}
        if proc.is_alive():
            conn.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    gone = puller.pull(free_port(), "unreachable", 2)  # a port nothing listens on: a holder not reached
    out["unreachable"] = {"ok": gone.ok, "error": gone.error[:200], "seconds": round(gone.seconds, 3)}
    proc, conn, port = start_holder(ctx, shape, device, timeout_s, "loom-holder-fresh")
    out["fresh_holder_pull_ok"] = puller.pull(port, "fresh", 2).ok
    conn.send("stop")
    proc.join(5)
    return out


def bare_link(ctx, shape: Shape, device: str, sizes: list[int], reps: int, timeout_s: float) -> list[dict]:
    """The same sizes over a bare pair group: what the link itself moves."""
    port = free_port()
    q = ctx.Queue()
    procs = [ctx.Process(target=_bare_side, args=(r, port, shape, device, sizes, reps, timeout_s, q), daemon=True)
             for r in (0, 1)]
    for p in procs:
        p.start()
    rows = q.get(timeout=600)
    for p in procs:
        p.join(30)
    return rows


def _bare_side(rank: int, port: int, shape: Shape, device: str, sizes: list[int], reps: int, timeout_s: float, q):
    import torch

    from workers.kv import pair_group

    os.environ["NCCL_HOSTID"] = f"loom-bare-{rank}"
    listen = None
    if rank == 0:
        listen = socket.socket()
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen.bind(("127.0.0.1", port))
        listen.listen()
    group = pair_group.build("127.0.0.1", port, rank, "nccl" if device == "cuda" else "gloo", timeout_s, listen)
    rows = []
    for n in sizes:
        t = torch.ones(n * shape.block_bytes // 2, dtype=torch.bfloat16, device=device)
        ms = []
        for r in range(reps + 1):
            t0 = time.perf_counter()
            group.send(t, 0, r, timeout_s) if rank == 1 else group.recv(t, 1, r, timeout_s)
            if device == "cuda":
                torch.cuda.synchronize()
            ms.append((time.perf_counter() - t0) * 1000)
        median = statistics.median(ms[1:])
        rows.append({"blocks": n, "bytes": n * shape.block_bytes, "ms_median": round(median, 3),
                     "gb_per_s": round(n * shape.block_bytes / median / 1e6, 3)})
    if rank == 0:
        q.put(rows)
    group.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default="1,8,64,256")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--timeout", type=float, default=5.0, help="kv_timeout_s: every wait of a transfer")
    for name, default in asdict(Shape()).items():
        p.add_argument(f"--{name}", type=type(default), default=default)
    args = p.parse_args(argv)
    shape = Shape(args.layers, args.blocks, args.block, args.heads, args.head, args.dtype)
    sizes = [int(x) for x in args.sizes.split(",")]
    ctx = mp.get_context("spawn")
    os.environ["NCCL_HOSTID"] = "loom-puller"
    proc, conn, port = start_holder(ctx, shape, args.device, args.timeout, "loom-holder")
    puller = Puller(shape, args.device, args.timeout)
    print(json.dumps({"phase": "pulls", "device": args.device, "block_bytes": shape.block_bytes,
                      "rows": pulls(puller, port, sizes, args.reps)}), flush=True)
    conn.send("stop")
    proc.join(10)
    print(json.dumps({"phase": "bare", "rows": bare_link(ctx, shape, args.device, sizes, args.reps, args.timeout)}),
          flush=True)
    print(json.dumps({"phase": "faults", "timeout_s": args.timeout,
                      **faults(ctx, puller, shape, args.device, args.timeout)}), flush=True)
    print(json.dumps({"machine": machine()}), flush=True)
    puller.side.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
