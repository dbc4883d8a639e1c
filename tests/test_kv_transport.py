"""The KV transport alone, between a holder process and a puller (workers/kv/worker_side.py,
transport.py, pair_group.py; bench/kv_pair.py runs them), with torch and pyzmq only: pulled
blocks equal the holder's byte for byte; a holder that dies after accepting a pull, accepts and
never sends, or cannot be reached fails that pull within the transfer timeout plus a second and
the puller lives on, and its next pull builds a pair again. On CPU over gloo; the same test over NCCL where CUDA
is present (two processes on one GPU, told apart by NCCL_HOSTID, as bench/kv_pair.py does)."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.kv_pair import DIE, HANG, Puller, Shape, caches, faults, pulls, start_holder

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 2.0
BACKENDS = [pytest.param("cpu", id="gloo"),
            pytest.param("cuda", id="nccl", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture
def nccl_env(monkeypatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("NCCL_IB_DISABLE", "1")
    monkeypatch.setenv("NCCL_HOSTID", "loom-test-puller")


@pytest.mark.parametrize("device", BACKENDS)
def test_pulls_move_every_byte_and_a_dead_or_hung_holder_fails_only_its_pull(device, nccl_env):
    shape = Shape(layers=3, blocks=48, block=16, heads=2, head=32, dtype="float32")
    ctx = mp.get_context("spawn")
    proc, conn, port = start_holder(ctx, shape, device, TIMEOUT_S, "loom-test-holder")
    try:
        puller = Puller(shape, device, TIMEOUT_S)
        rows = pulls(puller, port, [1, 5, 20], reps=2)
        assert all(r["all_right"] and r["failed"] == 0 for r in rows), rows
    finally:
        conn.send("stop")
        proc.join(10)
    out = faults(ctx, puller, shape, device, TIMEOUT_S)
    for fault in (DIE, HANG, "unreachable"):
        assert not out[fault]["ok"] and out[fault]["seconds"] <= TIMEOUT_S + 1, out
    assert out[HANG]["next_pull_ok"] and out["fresh_holder_pull_ok"], out  # a pair built again, both times
    puller.side.close()


def test_the_transport_imports_and_runs_without_vllm():
    """In a process where importing vLLM fails: the transport, the connector's worker half and its
    messages import."""
    code = ("import sys; sys.modules['vllm'] = None\n"
            "import workers.kv.transport, workers.kv.worker_side, workers.kv.scheduler_side, workers.kv.pair_group\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_two_engines_pulling_from_each_other_at_once_get_every_pull():
    """Each side both holds and pulls, more pulls at once than it has threads for them: a pull waits
    on its peer's join and send while that peer's own pulls wait on this side's (gloo, in one
    process; every pull right, none waiting out its timeout)."""
    from orchestrator.protocol.kv import KVHold
    from workers.kv.scheduler_side import PullSpec, StepPlan
    from workers.kv.worker_side import WorkerSide

    shape = Shape(layers=2, blocks=64, block=16, heads=2, head=32, dtype="float32")
    sides = [WorkerSide("127.0.0.1", TIMEOUT_S), WorkerSide("127.0.0.1", TIMEOUT_S)]
    held = [caches(shape, "cpu", seed=11), caches(shape, "cpu", seed=22)]
    for side, kv in zip(sides, held):
        side.register(kv, shape.blocks)
    n, plans = 8, [StepPlan(), StepPlan()]
    for me, peer in ((0, 1), (1, 0)):
        for k in range(n):  # from the peer's first half of its blocks into this side's second half
            hold = KVHold(f"side{peer}", "127.0.0.1", [sides[peer].channel.port], f"from{peer}-{k}", [k], shape.block,
                          shape.block_bytes, 30.0)
            plans[me].pulls.append(PullSpec(f"from{peer}-{k}", hold, [k], [shape.blocks // 2 + k]))
    for side, plan in zip(sides, plans):
        side.start(plan)
    reports = wait_reports(sides, n, TIMEOUT_S * 3)
    assert [r["ok"] for r in reports] == [True] * 2 * n, [r["error"] for r in reports if not r["ok"]]
    for me, peer in ((0, 1), (1, 0)):
        for layer in held[me]:
            assert torch.equal(held[me][layer][:, shape.blocks // 2:shape.blocks // 2 + n], held[peer][layer][:, :n])
    for side in sides:
        side.close()


def wait_reports(sides, n: int, timeout_s: float) -> list[dict]:
    deadline, reports = time.monotonic() + timeout_s, []
    while len(reports) < 2 * n and time.monotonic() < deadline:
        for side in sides:
            reports += side.take_reports()
        time.sleep(0.01)
    return reports
