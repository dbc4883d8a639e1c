"""The job store contract (in-process and Redis alike) and JobService recovery. Fast: no Ray,
no engines; the Redis cases run against a real redis-server (tests/redis_server.py)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import msgpack
import pytest
from redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

from cluster.config import ConfigError, LoomConfig
from orchestrator.driver.records import SCHEMA_VERSION, JobRecord, JobRequest
from orchestrator.service.jobs import RESTARTED, JobService
from orchestrator.service.redis_store import RedisJobStore
from orchestrator.service.store import InProcessJobStore, StoreUnavailable


@dataclass
class Backend:
    """One store, reached through as many clients as a test asks for (Redis: one per replica)."""
    kind: str
    url: str = ""
    shared: InProcessJobStore = field(default_factory=InProcessJobStore)
    opened: list[RedisJobStore] = field(default_factory=list)

    def store(self, **settings):
        """A client of the store; ``settings`` (ttl_s, ...) make the in-process store anew."""
        if self.kind == "inprocess":
            if settings:
                self.shared = InProcessJobStore(**settings)
            return self.shared
        self.opened.append(RedisJobStore(self.url, **settings))
        return self.opened[-1]

    async def raw_put(self, job_id: str, data: bytes) -> None:
        if self.kind == "inprocess":
            self.shared._data[job_id] = data
        else:
            await self.store().r.set(f"loom:job:{job_id}", data)

    async def close(self) -> None:
        for s in self.opened:
            await s.aclose()


@pytest.fixture(params=["inprocess", "redis"])
async def backend(request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    b = Backend(request.param, url)
    yield b
    await b.close()


class StubRunner:
    """A real minimal runner (the service's boundary, not what is tested): answers "ok"."""

    def __init__(self):
        self.ran: list[str] = []

    def complete(self, request: JobRequest) -> JobRequest:  # JobService.submit fills in the format first
        return request

    def prepare(self, request: JobRequest) -> None:  # and checks the prompt
        pass

    async def run(self, record: JobRecord, emit) -> JobRecord:
        self.ran.append(record.id)
        await asyncio.sleep(0)
        record.result = {"text": "ok", "answer": "ok"}
        record.status, record.finished = "done", time.time()
        return record


class FailingRunner(StubRunner):

    async def run(self, record: JobRecord, emit) -> JobRecord:
        raise RuntimeError("engine fell over")


def rec(job_id: str, status: str = "queued", created: float = 0.0, **kw) -> JobRecord:
    return JobRecord(id=job_id, request={"prompt": "Q: 1+1\n"}, status=status,
                     created=created or time.time(), **kw)


async def test_put_get_list_newest_first(backend):
    s = backend.store()
    for i, created in enumerate([100.0, 300.0, 200.0]):
        await s.put(rec(f"j{i}", created=created))
    assert [r.id for r in await s.list()] == ["j1", "j2", "j0"]
    assert [r.id for r in await s.list(2)] == ["j1", "j2"]
    assert await s.get("j2") == rec("j2", created=200.0)
    assert await s.get("nope") is None


async def test_list_by_status_follows_transitions(backend):
    s = backend.store()
    for i in range(3):
        await s.put(rec(f"j{i}", created=100.0 + i))
    await s.transition("j1", ("queued",), "running", started=5.0)
    assert [r.id for r in await s.list_by_status("queued")] == ["j2", "j0"]
    assert [r.id for r in await s.list_by_status("running")] == ["j1"]
    await s.transition("j1", ("running",), "done", result={"answer": "2"})
    assert await s.list_by_status("running") == []
    assert [(r.id, r.result) for r in await s.list_by_status("done")] == [("j1", {"answer": "2"})]


async def test_transition_is_compare_and_set(backend):
    s = backend.store()
    await s.put(rec("j", created=1.0))
    assert await s.transition("j", ("running",), "done") is None  # not running: nothing changes
    assert (await s.get("j")).status == "queued"
    moved = await s.transition("j", ("queued",), "running", started=7.0)
    assert (moved.status, moved.started) == ("running", 7.0)
    assert await s.get("j") == moved
    assert await s.transition("missing", ("queued",), "running") is None
    with pytest.raises(ValueError):
        await s.transition("j", ("running",), "done", id="other")
    with pytest.raises(ValueError):
        await s.transition("j", ("running",), "finished")


async def test_one_of_twenty_takes_a_queued_job(backend):
    a, b = backend.store(), backend.store()  # two replicas
    await a.put(rec("j"))
    if backend.kind == "redis":  # open the connections first, so that the twenty tries overlap
        await asyncio.gather(*(c.r.ping() for c in (a, b) for _ in range(10)))
    tries = [(a if i % 2 else b).transition("j", ("queued",), "running", started=float(i))
             for i in range(20)]
    won = [r for r in await asyncio.gather(*tries) if r is not None]
    assert len(won) == 1
    assert await a.get("j") == won[0] == await b.get("j")


async def test_finished_record_is_not_overwritten_by_a_stale_one(backend):
    a, b = backend.store(), backend.store()
    await a.put(rec("j"))
    running = await a.transition("j", ("queued",), "running", started=1.0)
    done, failed = await asyncio.gather(a.transition("j", ("running",), "done", result={"answer": "2"}),
                                        b.transition("j", ("running",), "failed", error="x"))
    assert (done is None) != (failed is None)  # exactly one final write lands
    final = await a.get("j")
    assert await b.transition("j", ("queued", "running"), "running") is None
    await b.put(running)  # a stale copy written back with put
    assert await a.get("j") == final
    assert [r.id for r in await a.list_by_status(final.status)] == ["j"]
    assert await a.list_by_status("running") == []


async def test_other_schema_versions_are_refused(backend):
    s = backend.store()
    with pytest.raises(ValueError, match="schema"):
        await s.put(rec("j", version=SCHEMA_VERSION + 1))
    old = rec("old").to_json() | {"version": SCHEMA_VERSION - 1}
    await backend.raw_put("old", msgpack.packb(old))
    with pytest.raises(ValueError, match="schema"):
        await s.get("old")


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
async def test_records_survive_a_redis_restart(redis_server, redis_url, hard):  # noqa: F811
    s = RedisJobStore(redis_url)
    await s.put(rec("a", created=1.0))
    await s.put(rec("b", created=2.0))
    await s.transition("a", ("queued",), "running", started=3.0)
    before = await s.list()
    await s.aclose()
    redis_server.restart(hard=hard)
    s = RedisJobStore(redis_url)
    try:
        assert await s.list() == before
        assert [r.id for r in await s.list_by_status("running")] == ["a"]
        assert await s.transition("b", ("queued",), "running") is not None
    finally:
        await s.aclose()


async def test_submit_runs_to_done_and_failures_are_recorded(backend):
    ok = await JobService(StubRunner(), backend.store()).run(JobRequest(prompt="Q: 1+1\n"))
    assert (ok.status, ok.result["answer"]) == ("done", "ok")
    assert await backend.store().get(ok.id) == ok
    bad = await JobService(FailingRunner(), backend.store()).run(JobRequest(prompt="Q: 1+1\n"))
    assert (bad.status, bad.error) == ("failed", "RuntimeError: engine fell over")
    assert (await backend.store().get(bad.id)).status == "failed"


async def test_recover_resumes_queued_and_fails_orphaned_running(backend):
    s = backend.store()
    queued = [rec(f"q{i}", created=10.0 + i) for i in range(3)]
    running = [rec(f"r{i}", "running", created=20.0 + i, started=21.0 + i) for i in range(2)]
    finished = rec("d", "done", created=30.0, result={"answer": "7"})
    for r in queued + running + [finished]:
        await s.put(r)
    runner = StubRunner()
    service = JobService(runner, s)
    out = await service.recover()
    assert out.resumed == ["q0", "q1", "q2"] and sorted(out.failed) == ["r0", "r1"] and out.live == []
    for job_id in out.resumed:
        assert (await service.wait(job_id)).status == "done"
    assert sorted(runner.ran) == ["q0", "q1", "q2"]
    stored = {r.id: r for r in await s.list()}
    assert set(stored) == {"q0", "q1", "q2", "r0", "r1", "d"}  # nothing vanished
    assert all(stored[f"q{i}"].result == {"text": "ok", "answer": "ok"} for i in range(3))
    assert all((stored[f"r{i}"].status, stored[f"r{i}"].error) == ("failed", RESTARTED) for i in range(2))
    assert stored["d"] == finished


async def test_two_controllers_recovering_run_each_job_once(backend):
    s = backend.store()
    for i in range(5):
        await s.put(rec(f"q{i}", created=1.0 + i))
    runner = StubRunner()
    services = [JobService(runner, backend.store()) for _ in range(2)]
    outs = await asyncio.gather(*(svc.recover() for svc in services))
    for svc, out in zip(services, outs):
        await asyncio.gather(*(svc.wait(i) for i in out.resumed))
    assert sorted(runner.ran) == [f"q{i}" for i in range(5)]
    assert [r.status for r in await s.list()] == ["done"] * 5


async def test_recover_leaves_a_live_controllers_job_until_its_lease_lapses(backend):
    s, other = backend.store(), backend.store()
    await s.put(rec("r", "running", started=time.time() - 60))
    await other.heartbeat("r", 0.3)  # another replica is still running it
    service = JobService(StubRunner(), s, heartbeat_s=0.2)
    out = await service.recover()
    assert (out.live, out.failed) == (["r"], [])
    assert (await s.get("r")).status == "running"
    for _ in range(100):  # the other replica stops renewing: the watcher fails the job
        if (await s.get("r")).status != "running":
            break
        await asyncio.sleep(0.05)
    assert ((await s.get("r")).status, (await s.get("r")).error) == ("failed", RESTARTED)


async def test_a_job_accepted_just_before_a_redis_outage_runs_once_it_is_back(redis_server, redis_url):  # noqa: F811
    s = RedisJobStore(redis_url)
    service = JobService(StubRunner(), s)
    try:
        record = await service.submit(JobRequest(prompt="Q: 1+1\n"))  # stored; its claim not yet made
        redis_server.stop(hard=True)
        await asyncio.sleep(0.5)  # the claim meets the outage and is retried
        redis_server.start()
        done = await asyncio.wait_for(service.wait(record.id), 30)
        assert (done.status, done.result["answer"]) == ("done", "ok")
        assert (await s.get(record.id)).status == "done"
    finally:
        await s.aclose()


class LostClaimAnswer(InProcessJobStore):
    """Applies the first claim (queued -> running), then fails as a connection lost before the
    answer came back does (Redis killed between the write and the reply)."""

    def __init__(self):
        super().__init__()
        self.lost = 0

    async def transition(self, job_id, from_statuses, to_status, **fields):
        out = await super().transition(job_id, from_statuses, to_status, **fields)
        if to_status == "running" and not self.lost:
            self.lost += 1
            raise StoreUnavailable("connection lost before the reply")
        return out


async def test_a_claim_the_store_applied_but_never_answered_is_still_run():
    store, runner = LostClaimAnswer(), StubRunner()
    done = await asyncio.wait_for(JobService(runner, store).run(JobRequest(prompt="Q: 1+1\n")), 30)
    assert store.lost == 1 and runner.ran == [done.id]  # the retried claim was refused: the job ran anyway
    assert (done.status, done.result["answer"]) == ("done", "ok")


async def test_the_sweeper_runs_a_queued_job_no_controller_took(backend):
    s = backend.store()
    await s.put(rec("stale", created=time.time() - 10))  # its controller's claim never landed
    runner = StubRunner()
    service = JobService(runner, s, heartbeat_s=1.0)
    sweeper = asyncio.create_task(service.sweep_forever())
    try:
        await asyncio.sleep(0.7)
        await s.put(rec("fresh"))  # just submitted elsewhere: its controller is about to take it
        for _ in range(100):
            if (await s.get("stale")).status == "done":
                break
            await asyncio.sleep(0.05)
    finally:
        sweeper.cancel()
    assert (await s.get("stale")).status == "done" and runner.ran == ["stale"]
    assert (await s.get("fresh")).status == "queued"


# ---- retention: finished records are bounded, live ones are never dropped -----------------------

async def test_finished_records_beyond_max_records_go_oldest_finished_first():
    s = InProcessJobStore(max_records=3)
    await s.put(rec("q0", created=1.0))
    await s.put(rec("r0", "running", created=2.0))
    await s.put(rec("a", "done", created=30.0))  # finished first, though created last
    await s.heartbeat("a", 60)
    await s.put(rec("b", "failed", created=10.0))
    assert sorted(r.id for r in await s.list(None)) == ["b", "q0", "r0"]  # "a" went, not "b"
    assert await s.get("a") is None and not await s.has_heartbeat("a") and "a" not in s._heartbeats
    await s.put(rec("c", "cancelled", created=20.0))
    assert sorted(r.id for r in await s.list(None)) == ["c", "q0", "r0"]
    for i in range(1, 4):  # over the bound with live records only: none of them goes
        await s.put(rec(f"q{i}", created=3.0 + i))
    assert sorted(r.id for r in await s.list(None)) == ["q0", "q1", "q2", "q3", "r0"]
    assert await s.transition("q0", ("queued",), "running") is not None
    assert await s.transition("r0", ("running",), "done", finished=time.time()) is not None
    assert await s.get("r0") is None  # finished over the bound: dropped at once
    assert sorted(r.id for r in await s.list(None)) == ["q0", "q1", "q2", "q3"]
    assert [r.id for r in await s.list_by_status("running")] == ["q0"]
    assert s._finished == {}


async def test_finished_records_expire_after_ttl_and_live_ones_never(backend):
    s = backend.store(ttl_s=0.5)
    await s.put(rec("q", created=1.0))  # live and far older than the ttl: kept
    await s.put(rec("r", "running", created=2.0, started=2.0))
    await s.put(rec("d", "done", created=3.0))
    await s.put(rec("c", "cancelled", created=4.0))
    await s.put(rec("f", created=5.0))
    await s.transition("f", ("queued",), "running")
    await s.transition("f", ("running",), "failed", error="x")
    assert [r.id for r in await s.list()] == ["f", "c", "d", "r", "q"]
    assert [r.id for r in await s.list_by_status("done")] == ["d"]
    await asyncio.sleep(0.7)
    await s.put(rec("late", "done", created=6.0))  # finished after the others expired: kept
    for job_id in ("d", "c", "f"):
        assert await s.get(job_id) is None, job_id
    assert [r.id for r in await s.list()] == ["late", "r", "q"]
    assert [r.id for r in await s.list(2)] == ["late", "r"]
    assert [r.id for r in await s.list_by_status("done")] == ["late"]
    assert await s.list_by_status("failed") == [] and await s.list_by_status("cancelled") == []
    assert [r.id for r in await s.list_by_status("running")] == ["r"]
    assert [r.id for r in await s.list_by_status("queued")] == ["q"]
    assert await s.transition("q", ("queued",), "running") is not None  # still a job to take
    if backend.kind == "redis":
        assert await s.r.exists("loom:job:d", "loom:job:c", "loom:job:f") == 0
        assert await s.r.pttl("loom:job:r") == -1 and await s.r.pttl("loom:job:q") == -1
        assert 0 < await s.r.pttl("loom:job:late") <= 500
        assert sorted(await s.r.zrange("loom:jobs", 0, -1)) == [b"late", b"q", b"r"]
        for status in ("done", "failed", "cancelled"):
            assert b"d" not in await s.r.zrange(f"loom:status:{status}", 0, -1)
        assert await s.r.zrange("loom:expiry", 0, -1) == [b"late"]


async def test_redis_trim_keeps_ids_whose_record_still_exists(redis_url):  # noqa: F811
    s = RedisJobStore(redis_url, ttl_s=60)
    try:
        await s.put(rec("r", "running", created=1.0))
        await s.put(rec("d", "done", created=2.0))
        # due by the expiry index's clock (a replica's clock far ahead), but both keys exist
        await s.r.zadd("loom:expiry", {"r": 0, "d": 0})
        assert [r.id for r in await s.list()] == ["d", "r"]
        assert [r.id for r in await s.list_by_status("running")] == ["r"]
        assert [r.id for r in await s.list_by_status("done")] == ["d"]
        # "r" has no expiry: out of the expiry index; "d" scored again by its key's time left
        ((member, score),) = await s.r.zrange("loom:expiry", 0, -1, withscores=True)
        assert member == b"d" and score > (time.time() + 50) * 1000
        await s.r.zadd("loom:expiry", {"d": 0})
        await s.r.delete("loom:job:d")  # gone now (as an expiry would): out of every index
        assert [r.id for r in await s.list()] == ["r"]
        assert await s.r.zrange("loom:status:done", 0, -1) == []
        assert await s.r.zrange("loom:jobs", 0, -1) == [b"r"]
        assert await s.r.zrange("loom:expiry", 0, -1) == []
    finally:
        await s.aclose()


def test_store_retention_settings_are_validated():
    cfg = LoomConfig.from_dict({"store_max_records": 5, "store_ttl_s": 0.5})
    assert (cfg.store_max_records, cfg.store_ttl_s) == (5, 0.5)
    assert (LoomConfig().store_max_records, LoomConfig().store_ttl_s) == (10000, 86400.0)
    for bad in ({"store_max_records": 0}, {"store_ttl_s": 0}, {"store_ttl_s": -1.0}):
        with pytest.raises(ConfigError, match="store_"):
            LoomConfig.from_dict(bad)
    with pytest.raises(ValueError):
        InProcessJobStore(max_records=0)
