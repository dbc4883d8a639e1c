"""Prefix KV moved between the session's two real vLLM engines over a gloo pair group (Loom's
KV connector, workers/kv): a pulled prefix gives the holder's greedy tokens and is computed
zero times on the target; every failure path (holder dead, hold expired, target aborted, target
already holding it) ends with the right tokens and no block left in use on either engine."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time

import psutil
import pytest
import ray
from engine_requests import BLOCK, FOUR, generate, no_blocks_in_use, prompt_and_held, prompt_ids

from bench.kv_pair import DIE, Shape, start_holder
from cluster import runtime
from cluster.config import load
from orchestrator.driver.records import JobRequest
from orchestrator.protocol.kv import PULLED_KEY, KVHold, PullReport
from orchestrator.routing.link import LinkModel

pytestmark = pytest.mark.integration
async def cold(loom) -> None:
    """Both engines empty, and the index told so (an engine publishes its cleared cache with its
    next step: one 1-token request each)."""
    names, handles = pair(loom)
    await no_blocks_in_use(*handles)
    for name, h in zip(names, handles):
        await generate(h, f"kv-flush-{time.monotonic_ns()}", [7], n=1)
    deadline = time.monotonic() + 10
    while loom.placer.index.matched(prompt_ids(loom, FOUR), names) != dict.fromkeys(names, 0):
        assert time.monotonic() < deadline, "the index still shows a cleared cache"
        await asyncio.sleep(0.05)


def pair(loom):
    names = list(loom.pool.handles)
    return names, [loom.pool.handles[n] for n in names]


async def test_a_thread_pulls_its_prefix_from_the_worker_holding_it(loom):
    (n0, n1), (w0, w1) = pair(loom)
    await no_blocks_in_use(w0, w1)
    ids, held = prompt_and_held(loom)
    reference, _ = await generate(w0, "kv-ref", ids)
    hold = await w0.hold.remote("kv-hold-1", ids, held)
    assert hold.holder == n0 and hold.num_tokens == held and len(hold.block_ids) == held // BLOCK
    tokens, last = await generate(w1, "kv-pull-1", ids, kv=hold.to_params())
    report = PullReport(**last.kv_params[PULLED_KEY])
    assert tokens == reference  # the pulled KV is the holder's, bit for bit
    assert report.ok and report.holder == n0 and report.blocks == held // BLOCK
    assert report.bytes == report.blocks * hold.block_bytes
    assert last.cached_tokens == held  # w1 held nothing: every prefix token came over the wire
    # w1's engine now publishes the pulled blocks as its own: the index sees them there
    index = loom.placer.index
    deadline = time.monotonic() + 10
    while index.matched(ids, [n1])[n1] < held:
        assert time.monotonic() < deadline, "the pulled blocks never showed in w1's KV events"
        await asyncio.sleep(0.05)
    print(f"\npulled {report.blocks} blocks, {report.bytes} bytes in {report.ms:.1f} ms")
    await no_blocks_in_use(w0, w1)  # the holder freed its hold once sent


async def test_a_hold_the_target_does_not_need_is_released_at_once(loom):
    (_, _), (w0, w1) = pair(loom)
    await no_blocks_in_use(w0, w1)
    ids, held = prompt_and_held(loom, 260)
    reference, _ = await generate(w1, "kv-warm-w1", ids)  # w1 holds it already
    hold = await w0.hold.remote("kv-hold-2", ids, held)  # pinned for 30 s unless released
    tokens, last = await generate(w1, "kv-pull-2", ids, kv=hold.to_params())
    assert tokens == reference and last.cached_tokens == held and not (last.kv_params or {}).get(PULLED_KEY)
    await no_blocks_in_use(w0, w1, timeout=10.0)  # well before the hold would expire


async def test_a_pull_after_the_hold_expired_is_refused_and_recomputed(loom):
    (_, _), (w0, w1) = pair(loom)
    await no_blocks_in_use(w0, w1)
    ids, held = prompt_and_held(loom, 280)
    reference, _ = await generate(w0, "kv-ref-3", ids)
    hold = await w0.hold.remote("kv-hold-3", ids, held, 0.3)
    await asyncio.sleep(1.5)
    await no_blocks_in_use(w0)  # expired: freed (and the cache dropped: the blocks may be reused)
    tokens, last = await generate(w1, "kv-pull-3", ids, kv=hold.to_params())
    report = PullReport(**last.kv_params[PULLED_KEY])
    assert tokens == reference and not report.ok and "expired" in report.error
    assert last.cached_tokens == 0  # nothing loaded: all recomputed
    await no_blocks_in_use(w0, w1)


async def test_a_holder_that_dies_mid_pull_fails_the_pull_in_time_and_the_engine_recomputes(loom, loom_config):
    """A holder (a process of the transport alone, bench/kv_pair.py) accepts the engine's pull and
    dies before sending: the pull fails within the transfer timeout plus a second, the pulling
    engine lives, recomputes the prefix (the same tokens), and frees every block."""
    (_, _), (_, w1) = pair(loom)
    await no_blocks_in_use(w1)
    ids, held = prompt_and_held(loom, 260)
    reference, _ = await generate(w1, "kv-ref-6", ids)
    await no_blocks_in_use(w1)
    shape = Shape(layers=2, blocks=held // BLOCK, block=BLOCK, heads=1, head=8, dtype="float32")
    proc, _, port = start_holder(mp.get_context("spawn"), shape, "cpu", loom_config.engine.kv_timeout_s, "fake")
    try:
        hold = KVHold("fake-holder", "127.0.0.1", [port], DIE, list(range(held // BLOCK)), held, shape.block_bytes, 30.0)
        tokens, last = await generate(w1, "kv-pull-6", ids, kv=hold.to_params())
    finally:
        proc.join(10)
    report = PullReport(**last.kv_params[PULLED_KEY])
    assert not report.ok and report.ms <= (loom_config.engine.kv_timeout_s + 1) * 1000, report
    assert tokens == reference and last.cached_tokens == 0  # recomputed, nothing loaded
    assert (await w1.health.remote())["state"] == "ok"
    await no_blocks_in_use(w1)


async def test_a_target_aborted_mid_transfer_frees_its_blocks_on_both_engines(loom):
    (_, _), (w0, w1) = pair(loom)
    await no_blocks_in_use(w0, w1)
    ids, held = prompt_and_held(loom, 320)
    await generate(w0, "kv-warm-4", ids, n=1)
    for k, delay in enumerate((0.0, 0.005, 0.02, 0.05)):  # before, during and after the pull
        hold = await w0.hold.remote(f"kv-hold-4-{k}", ids, held)
        stream = asyncio.ensure_future(generate(w1, f"kv-pull-4-{k}", ids, n=200, kv=hold.to_params()))
        await asyncio.sleep(delay)
        await w1.abort.remote(f"kv-pull-4-{k}")
        await stream
        await no_blocks_in_use(w1)
    await no_blocks_in_use(w0)  # every hold freed (sent or released), none waiting for its 30 s


async def test_a_holder_killed_before_the_pull_costs_a_recompute_and_its_restart_serves_again(loom, ray_cluster):
    """On two engines of its own (the session's are never killed here), so that the later tests
    place on engines that have not been restarted."""
    cfg = load(overrides={"num_workers": 2, "worker_prefix": "loom-kvkill", "worker_cpu_binds": ["0", "1"]})
    pool, _ = runtime.start_routing(cfg)
    try:
        (n0, _), (w0, w1) = pool.names(), list(pool.handles.values())
        ids, held = prompt_and_held(loom, 240)
        reference, _ = await generate(w0, "kv-ref-5", ids)
        hold = await w0.hold.remote("kv-hold-5", ids, held)
        pid = await w0.pid.remote()
        for proc in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:  # the engine too
            os.kill(proc.pid, signal.SIGKILL)
        tokens, last = await generate(w1, "kv-pull-5", ids, kv=hold.to_params())
        report = PullReport(**last.kv_params[PULLED_KEY])
        assert tokens == reference and not report.ok and last.cached_tokens == 0
        await no_blocks_in_use(w1)
        await _back(pool, n0, w0, pid)
        hold = await w0.hold.remote("kv-hold-5b", ids, held)  # the new engine holds and serves again
        tokens, last = await generate(w1, "kv-pull-5b", ids, kv=hold.to_params())
        report = PullReport(**last.kv_params[PULLED_KEY])
        assert tokens == reference and report.ok, report.error
        assert last.cached_tokens == held
    finally:
        runtime.shutdown_actors(cfg, coordinator=False)


async def _back(pool, name: str, handle, old_pid: int, timeout: float = 240.0) -> None:
    """The killed worker restarted (a new engine) and the pool places on it again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await asyncio.wait_for(handle.pid.remote(), 5) != old_pid:
                break
        except (ray.exceptions.RayActorError, TimeoutError):
            pass
        await asyncio.sleep(0.5)
    pool.lost(name)  # as the engine client does on the next call that fails
    while name not in pool.placer.live():
        assert time.monotonic() < deadline, f"{name} not back in {timeout} s"
        await asyncio.sleep(0.5)


async def test_a_four_thread_fork_over_two_workers_joins_as_on_one(loom, service):
    (n0, n1), (w0, w1) = pair(loom)
    placer = loom.placer
    await cold(loom)
    placer.mark_down(n1)
    try:
        alone = await service.run(JobRequest(prompt=FOUR.prompt))
    finally:
        placer.add_worker(n1, placer.profiles[n1], placer.link.bytes_per_token[n1])
    assert alone.status == "done" and {n["worker"] for n in alone.dag["nodes"] if n["worker"]} == {n0}
    await cold(loom)
    # moving KV costs nothing (and the model learns nothing), and both engines are measured alike
    # (start-up profiles vary from run to run): a thread goes to the idle engine once the holder
    # has one, so the threads spread and pull
    saved, profile = placer.link, placer.profiles[n1]
    placer.set_link(LinkModel(bytes_per_s=1e13, fixed_s=0.0, bytes_per_token=dict(saved.bytes_per_token), window=0))
    placer.add_worker(n1, placer.profiles[n0], saved.bytes_per_token[n1])
    try:
        spread = await service.run(JobRequest(prompt=FOUR.prompt))
    finally:
        placer.set_link(saved)
        placer.add_worker(n1, profile, saved.bytes_per_token[n1])
    threads = [n for n in spread.dag["nodes"] if n["kind"] == "thread"]
    pulled = [t for t in threads if (t["placement"]["prefix"] or {}).get("source") == "pulled"]
    where = [(t["worker"], t["placement"]["matched"], t["placement"]["reason"]) for t in threads]
    assert len(threads) == 4 and pulled and {t["worker"] for t in threads} == {n0, n1}, where
    for t in pulled:
        p = t["placement"]["prefix"]
        assert p["worker"] != t["worker"] and p["blocks"] > 0 and p["bytes"] > 0
        assert t["cached_tokens"] >= p["tokens"]  # pulled tokens count as cached, none recomputed
    assert spread.result["text"] == alone.result["text"], where
    await no_blocks_in_use(w0, w1)
