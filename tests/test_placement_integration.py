"""Placement across two real vLLM engines (the session's workers, `num_workers: 2`): what the
KV index says a worker holds is what its engine then serves from cache; every thread that does
not go to its prefix's holder is there because the cost model says so, with the numbers in the
record; an eviction on one engine moves the next request; two ingress replicas place alike."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from engine_requests import chunks
from polling import final_record, wait_until
from redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

from cluster import runtime
from cluster.config import load
from models.task import Question, Term, trace
from orchestrator.driver.records import JobRequest
from orchestrator.protocol.fork import ForkPolicy
from orchestrator.protocol.generation import GenRequest

pytestmark = pytest.mark.integration
FORKING = [Question((Term(100 + 37 * i, 1 + i % 9), Term(20 + i, 7), Term(5 + 3 * i, 4 + i % 5))) for i in range(16)]
# asked of no engine before the replica test: four-digit terms, which no other test or sampler writes
UNSEEN = Question((Term(4817, 6), Term(2239, 8), Term(6053, 7)))


def threads(record):
    return [n for n in record.dag["nodes"] if n["kind"] == "thread"]


async def run_all(service, questions, concurrency):
    gate = asyncio.Semaphore(concurrency)

    async def one(q):
        async with gate:
            return await service.run(JobRequest(prompt=q.prompt, fork_policy=ForkPolicy.EAGER))  # every thread runs
    return await asyncio.gather(*(one(q) for q in questions))


async def test_threads_go_to_their_prefix_unless_the_cost_model_says_otherwise(service, loom):
    """Every thread runs where the cost model said (keeping, pulling or recomputing its prefix);
    no prompt token a peer held is recomputed unless the model chose that, and the record says so."""
    assert len(loom.pool.handles) == 2 and loom.placer.link is not None
    records = await run_all(service, FORKING, concurrency=8)
    prompt = cached = pulled = peer_held_recomputed = 0
    for rec in records:
        assert rec.status == "done", rec.error
        for t in threads(rec):
            place, origin = t["placement"], t["placement"]["prefix"]
            assert set(place["costs"]) == set(place["matched"]) == set(loom.pool.handles) and place["reason"]
            chosen = place["pull_costs"][t["worker"]] if place["source"] else place["costs"][t["worker"]]
            assert chosen == min([*place["costs"].values(), *place["pull_costs"].values()]), t  # the cheapest
            if origin["source"] == "pulled":
                assert origin["worker"] == place["source"] != t["worker"] and origin["bytes"] > 0, t
                pulled += 1
            # the index never claims more than the engine then serves from its cache
            assert t["cached_tokens"] >= place["matched_tokens"], t
            missed = max(place["matched"].values()) - t["cached_tokens"]
            if missed > 0:  # a peer held tokens this thread recomputed: the model chose it, and says why
                assert not place["source"] or "failed" in origin["reason"], t
                assert place["costs"][t["worker"]] <= place["pull_costs"].get(t["worker"], float("inf")), t
                assert place["reason"].startswith("cheaper than recomputing elsewhere"), t
                peer_held_recomputed += missed
            prompt, cached = prompt + t["prompt_tokens"], cached + t["cached_tokens"]
    print(f"\nthread prompt tokens recomputed: {1 - cached / prompt:.1%} of {prompt}; threads that pulled "
          f"their prefix: {pulled}; tokens a peer held that were recomputed (by choice): {peer_held_recomputed}")


def engine_request(handle, ids, rid):
    async def go():
        await chunks(handle, GenRequest(rid, ids, 1))
    return go()


async def test_an_eviction_is_seen_and_moves_the_next_request(ray_cluster):
    """Two engines of their own, the first with a KV cache of 40 blocks: both hold a prompt; the
    first is preferred (a tie); flooding it evicts the prompt there; the next goes to the second.
    Both engines get the same measured speed, so that the held prefix alone decides."""
    cfg = load(overrides={"num_workers": 2, "worker_prefix": "loom-evict", "engine": {"num_kv_blocks": 40},
                          "worker_cpu_binds": ["0", "1"]})
    pool, placer = runtime.start_routing(cfg)
    small, big = pool.names()
    placer.add_worker(big, placer.profiles[small], 0)
    index = placer.index
    try:
        prompt = [5 + (i * 7) % 100 for i in range(200)]  # 6 whole blocks of 32
        for name in (small, big):
            await engine_request(pool.handle(name), prompt, f"warm-{name}")
        wait_until(lambda: index.matched(prompt, [small, big]) == {small: 192, big: 192}, timeout=20)
        assert placer.place(prompt + [9]).worker == small
        for k in range(8):  # 8 other prompts of 7 blocks through a cache of 40
            await engine_request(pool.handle(small), [6 + (i * 11 + k) % 100 for i in range(224)], f"flood-{k}")
        wait_until(lambda: index.matched(prompt, [small])[small] == 0, timeout=20)
        placed = placer.place(prompt + [9])
        assert placed.worker == big and placed.matched == {small: 0, big: 192}
    finally:
        runtime.shutdown_actors(cfg, coordinator=False)


def _both_replicas_applied(views: dict, health: dict, worker: str, seq: int) -> bool:
    """Notes how far the replica that answered ``/healthz`` has applied ``worker``'s KV events;
    true once two replicas have applied batch ``seq`` (their subscribers follow on their own time)."""
    views[health["replica"]] = health["workers"][worker]["kv_events_applied"]
    return len(views) == 2 and all(v >= seq for v in views.values())


def test_two_ingress_replicas_place_a_prompt_where_the_engines_say_it_is(loom, loom_config, serve_url,
                                                                        redis_url):  # noqa: F811
    """Both replicas share one Redis store (a job's record is readable through either)."""
    from ray import serve

    from cluster.app import LoomIngress

    app = LoomIngress.options(num_replicas=2).bind({**loom_config.to_dict(), "redis_url": redis_url})
    serve.run(app, name="loom-2r", route_prefix="/r2")
    try:
        # a question part-way through its reasoning, 3+ whole blocks, that only the holder will have seen
        # (FORKING's questions ran earlier on either engine: both would hold it and either is right)
        prompt = UNSEEN.prompt + trace(UNSEEN)[:240]
        ids = loom.runner.prepare(JobRequest(prompt=prompt))
        held = len(ids) // 32 * 32
        holder = list(loom.pool.handles)[1]
        asyncio.run(engine_request(loom.pool.handles[holder], ids, "warm-2r"))
        workers = list(loom.pool.handles)
        wait_until(lambda: loom.placer.index.matched(ids, workers)[holder] == held, timeout=20)
        applied = loom.placer.index.applied(holder)  # the batch that stored the prompt, here
        body = {"prompt": prompt, "budget": {"max_total_tokens": 16}}
        with httpx.Client(base_url=serve_url + "/r2", timeout=300) as client:
            views: dict[str, int] = {}  # replica -> the last of the holder's event batches it applied
            wait_until(lambda: _both_replicas_applied(views, client.get("/healthz").json(), holder, applied),
                       timeout=60, every=0.05)
            placements = []
            for _ in range(16):  # Serve spreads them: both replicas place (all on one: 2 in 65,536)
                rec = final_record(client, client.post("/v1/jobs", json=body).json()["id"])
                placements.append(rec["dag"]["nodes"][0])
        # every replica saw the prompt where the holder's engine said it was (the other engine's
        # view is not compared: its own events, from earlier tests, are not waited for here)
        seen = [p["placement"] for p in placements]
        assert all(place["matched"][holder] == held for place in seen) and held >= 96, seen
        assert len({place["by"] for place in seen}) == 2, seen  # both replicas placed ...
        for node, place in zip(placements, seen):  # ... by the cost model, on that view
            options = {**place["costs"], **{f"pull to {w}": c for w, c in place["pull_costs"].items()}}
            chosen = options[f"pull to {node['worker']}" if place["source"] else node["worker"]]
            assert chosen == min(options.values()), place
            if place["matched"][node["worker"]] < held:  # away from the prompt: the holder was dearer, and why
                assert place["costs"][holder] > chosen, place
                assert place["reason"].startswith("pulls" if place["source"] else "cheaper than"), place
        # (which worker wins depends on the speeds each engine measured at start-up: not asserted)
    finally:
        serve.delete("loom-2r")


