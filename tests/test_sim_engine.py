"""The simulated engine (workers/sim): its block cache, step profile, script and scheduler as
units, and the engine itself through the Engine protocol with the shipped model's tokenizer, its
KV events read by Loom's own subscriber into Loom's own index."""
from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from polling import wait_until

from models.task import Question, Term, trace
from orchestrator.protocol.generation import GenRequest
from orchestrator.routing.kv_events import KVEventSubscriber, SharedIndex
from orchestrator.routing.kv_index import KVIndex
from workers.config import EngineBackend, EngineConfig, EngineConfigError
from workers.sim.block_cache import BlockCache, BlockTable, EventKind
from workers.sim.profile import ProfileError, StepProfile, load
from workers.sim.scheduler import Finish, Scheduler, SimRequest
from workers.sim.script import Script

MODEL = "models/loom-arith"
B = 4


def profile(**kw) -> StepProfile:
    return StepProfile(**{"name": "t", "source": "test", "prefill_s_per_token": 0.001,
                          "decode_s": {1: 0.01, 4: 0.02, 16: 0.05}, **kw})


# -- the step profile

def test_decode_step_time_is_piecewise_linear_and_extends_past_the_largest_batch():
    p = profile()
    assert p.decode_step_s(1) == 0.01 and p.decode_step_s(0) == 0.01
    assert p.decode_step_s(4) == pytest.approx(0.02)
    assert p.decode_step_s(10) == pytest.approx(0.02 + 6 * (0.03 / 12))
    assert p.decode_step_s(28) == pytest.approx(0.05 + 12 * (0.03 / 12))
    assert p.step_s(4, 100) == pytest.approx(0.02 + 0.1)
    assert p.step_s(4, 0) == pytest.approx(0.02)
    assert p.step_s(0, 100) == pytest.approx(0.01 + 0.1)  # a step of prefill only: a batch of one's
    fixed = profile(prefill_step_s=0.004)
    assert fixed.step_s(4, 100) == pytest.approx(0.02 + 0.004 + 0.1) and fixed.step_s(4, 0) == pytest.approx(0.02)


def test_the_shipped_gpu_profile_cites_its_figures():
    p = load("h100-qwen3-8b")
    assert p.decode_step_s(8) == pytest.approx(0.0097) and p.decode_step_s(64) == pytest.approx(0.02664)
    assert "ML.ENERGY" in p.source and "Vidur" in p.source and p.kv_tokens == 377062
    assert p.host_busy_share == 0 and p.worker_cpu_s_per_step == 0  # nothing emulated on the host


def test_profiles_load_by_name_or_path_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile().to_dict()))
    assert load(str(path)) == profile()
    with pytest.raises(ProfileError, match="no step profile 'nope'"):
        load("nope")
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ProfileError, match="not a step profile"):
        load(str(path))
    with pytest.raises(ProfileError, match="decode_s"):
        profile(decode_s={0: 0.01})


# -- the block cache

def test_full_blocks_are_cached_shared_and_published_once():
    cache = BlockCache(8, B)
    a, b = BlockTable(), BlockTable()
    assert cache.grow(a, list(range(10)), 10)  # two full blocks and a partial
    (stored,) = cache.take_events()
    assert stored.kind is EventKind.STORED and stored.parent_block_hash is None
    assert stored.token_ids == list(range(8)) and len(stored.block_hashes) == 2
    assert cache.used() == 3
    hits = cache.hits(list(range(9)))
    assert hits == stored.block_hashes
    cache.reference(b, hits)
    assert cache.grow(b, list(range(8)) + [99], 9)
    assert cache.take_events() == [] and cache.used() == 4  # shared blocks, one partial each


def test_freed_blocks_stay_cached_until_evicted_last_block_first():
    cache = BlockCache(4, B)
    a = BlockTable()
    assert cache.grow(a, list(range(12)), 12)  # three blocks
    (stored,) = cache.take_events()
    cache.release(a)
    assert cache.used() == 0 and cache.hits(list(range(12))) == stored.block_hashes  # still cached
    b = BlockTable()
    assert cache.grow(b, [50 + i for i in range(8)], 8)  # two blocks: one never used, one evicted
    removed = [e for e in cache.take_events() if e.kind is EventKind.REMOVED]
    assert [e.block_hashes for e in removed] == [[stored.block_hashes[2]]]  # the request's last block
    assert cache.hits(list(range(12))) == stored.block_hashes[:2]


def test_blocks_in_use_are_never_evicted_and_a_full_cache_says_no():
    cache = BlockCache(2, B)
    a, b = BlockTable(), BlockTable()
    assert cache.grow(a, list(range(8)), 8)
    assert not cache.grow(b, [9] * 4, 4)
    assert b.hashes == [] and cache.used() == 2
    assert not cache.clear()  # blocks in use
    cache.release(a)
    assert cache.clear() and cache.take_events()[-1].kind is EventKind.CLEARED


# -- the script

def docs() -> list[str]:
    qs = [Question((Term(12, 3), Term(45, 6), Term(7))), Question((Term(905, 9), Term(33, 4)))]
    return [q.prompt + trace(q) for q in qs]


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f"{MODEL}/tokenizer.json")


def script_of(tok, texts: list[str]) -> Script:
    return Script([tok.encode(t, add_special_tokens=False).ids + [2] for t in texts], eos=2, bos=1,
                  newline=tok.token_to_id("\n"), filler=tok.token_to_id("."))


def test_a_prompt_continues_its_document_and_a_thread_its_own_part(tok):
    text = docs()[0]
    script = script_of(tok, docs())
    fork = text.index("</Outlines>") + len("</Outlines>")
    line = text.index("\n") + 1
    rest = script.continuation(tok.encode(text[:line]).ids)  # with BOS
    assert tok.decode(rest, skip_special_tokens=False) == text[line:] + "</s>"
    thread2 = tok.encode(text[:fork] + "\n<Thread>\n2:").ids
    written = tok.decode(script.continuation(thread2), skip_special_tokens=False)
    assert written.startswith(" b 45*6\n") and "b=07200\n</Thread>" in written
    assert script.continuation(tok.encode("Q: 1+1\nsomething else entirely").ids) is None


# -- the scheduler

def request(rid: str, prompt: list[int], script: list[int], max_tokens: int = 100,
            stops: dict | None = None, eos: int | None = 2) -> SimRequest:
    return SimRequest(rid, prompt, script, filler=7, max_tokens=max_tokens, stops=stops or {}, eos=eos)


def run_all(s: Scheduler) -> tuple[dict[str, list[int]], dict[str, tuple], list]:
    out, ends, plans = {}, {}, []
    while s.has_work():
        plan = s.schedule()
        plans.append(plan)
        for o in s.complete(plan):
            out.setdefault(o.request.id, []).extend(o.token_ids)
            if o.finish:
                ends[o.request.id] = (o.finish, o.stop_reason)
    return out, ends, plans


def test_requests_end_on_eos_then_stop_then_length_in_vllms_order():
    s = Scheduler(BlockCache(64, B), profile(), max_num_seqs=8, max_model_len=64)
    s.add(request("eos", [1, 5, 6], [9, 2, 9]))
    s.add(request("stop", [1, 5, 7], [9, 10, 11, 12], stops={(10, 11): "ab"}))
    s.add(request("length", [1, 5, 8], [9, 9, 9, 9], max_tokens=3))
    s.add(request("ignored", [1, 5, 9], [2, 2], max_tokens=4, eos=None))
    s.add(request("model_len", [1] * 60, [9] * 10))
    out, ends, _ = run_all(s)
    assert out["eos"] == [9, 2] and ends["eos"] == (Finish.STOP, None)
    assert out["stop"] == [9, 10, 11] and ends["stop"] == (Finish.STOP, "ab")
    assert out["length"] == [9, 9, 9] and ends["length"] == (Finish.LENGTH, None)
    assert out["ignored"] == [2, 2, 7, 7] and ends["ignored"] == (Finish.LENGTH, None)  # then filler
    assert len(out["model_len"]) == 4 and ends["model_len"] == (Finish.LENGTH, None)
    assert s.cache.used() == 0


def test_batching_is_bounded_decodes_go_first_and_prefill_is_chunked():
    s = Scheduler(BlockCache(256, B), profile(max_batched_tokens=16), max_num_seqs=2, max_model_len=512)
    s.add(request("a", [3] * 6, [9] * 5, max_tokens=5))
    s.add(request("b", [4] * 40, [9] * 3, max_tokens=3))
    s.add(request("c", [5] * 4, [9] * 2, max_tokens=2))
    first = s.schedule()
    assert first.work == {"a": 6, "b": 10} and first.decoding == 0 and first.prefilled == 16
    assert s.load()["running"] == 2 and s.load()["waiting"] == 1  # c waits for a seat
    s.complete(first)
    second = s.schedule()
    assert second.work == {"a": 1, "b": 15} and second.decoding == 1
    assert second.seconds == pytest.approx(profile().step_s(1, 15))
    out, _, _ = run_all(s)
    assert len(out["a"]) == 4 and len(out["b"]) == 3 and len(out["c"]) == 2


def test_a_prefix_cache_hit_is_reported_and_skips_its_prefill():
    s = Scheduler(BlockCache(64, B), profile(), max_num_seqs=8, max_model_len=512)
    prefix = list(range(10, 22))  # three blocks
    s.add(request("a", prefix + [1], [9, 2]))
    run_all(s)
    s.add(request("b", prefix + [5, 6], [9, 2]))
    plan = s.schedule()
    b = s.running[0]
    assert b.cached == 12 and plan.work == {"b": 2}
    s.add(request("c", list(range(10, 18)), [9, 2]))  # all of its two blocks: one token recomputed
    run_all(s)


def test_no_blocks_left_preempts_the_latest_request_which_then_recomputes():
    s = Scheduler(BlockCache(6, B), profile(), max_num_seqs=8, max_model_len=512)
    s.add(request("a", [3] * 8, [9] * 12, max_tokens=12))
    s.add(request("b", [4] * 8, [9] * 12, max_tokens=12))
    out, ends, _ = run_all(s)
    assert s.preemptions > 0
    assert out["a"] == [9] * 12 and out["b"] == [9] * 12  # both whole
    assert {e[0] for e in ends.values()} == {Finish.LENGTH}


def test_an_aborted_request_gives_back_its_blocks():
    s = Scheduler(BlockCache(64, B), profile(), max_num_seqs=8, max_model_len=512)
    s.add(request("a", list(range(9)), [9] * 50))
    s.complete(s.schedule())
    assert s.cache.used() == 3
    assert s.abort("a").id == "a" and s.abort("a") is None
    assert s.cache.used() == 0 and not s.has_work()


# -- the engine

@pytest.fixture
def engine_cfg(tmp_path):
    prof = tmp_path / "fast.json"
    prof.write_text(json.dumps(profile(decode_s={1: 0.001, 64: 0.002}, prefill_s_per_token=0.00001).to_dict()))
    documents = tmp_path / "docs.jsonl"
    documents.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs()))
    return EngineConfig(MODEL, engine_backend=EngineBackend.SIM, sim_profile=str(prof),
                        sim_documents=str(documents), block_size=B, num_kv_blocks=512)


@contextlib.asynccontextmanager
async def sim_engine(cfg):
    from workers.sim.engine import SimEngine

    engine = SimEngine(cfg)
    try:
        yield engine
    finally:
        engine.shutdown()


async def collect(engine, req: GenRequest) -> list:
    return [c async for c in engine.generate(req)]


async def test_the_engine_writes_the_documents_and_stops_as_vllm_does(engine_cfg):
    async with sim_engine(engine_cfg) as engine:
        text = docs()[0]
        fork = text.index("</Outlines>") + len("</Outlines>")
        prompt = engine.encode(text[:text.index("\n") + 1], bos=True)
        chunks = await collect(engine, GenRequest("main", prompt, 400, stop=["</Outlines>"]))
        written = engine.detokenize([t for c in chunks for t in c.token_ids])
        assert written == text[len(engine.detokenize(prompt)) - 3:fork]  # (BOS is 3 characters)
        last = chunks[-1]
        assert last.finished and last.finish_reason == "stop" and last.stop_reason == "</Outlines>"
        assert all(not c.finished for c in chunks[:-1]) and 0 < last.first_token_at <= last.finished_at
        join = engine.encode(text[:-len("A: 313")], bos=True)
        end = await collect(engine, GenRequest("end", join, 50))
        assert engine.detokenize([t for c in end for t in c.token_ids]) == "A: 313</s>"
        assert end[-1].stop_reason is None and end[-1].cached_tokens > 0  # EOS; the prefix was cached


async def test_a_request_the_caller_stops_reading_is_aborted(engine_cfg):
    async with sim_engine(engine_cfg) as engine:
        stream = engine.generate(GenRequest("long", engine.encode("Q: 1+1\n", bos=True), 10_000, ignore_eos=True))
        async for _ in stream:
            break
        await stream.aclose()
        assert engine.scheduler()["running"] == 0
        other = asyncio.create_task(collect(engine, GenRequest("x", engine.encode("Q: 2+2\n", bos=True), 10_000)))
        await asyncio.sleep(0.05)
        await engine.abort("x")
        chunks = await other
        assert chunks[-1].finish_reason == "abort" and engine.scheduler() == {"running": 0, "waiting": 0,
                                                                              "kv_usage": 0.0}


async def test_loom_s_index_sees_what_the_simulated_engine_caches(engine_cfg):
    async with sim_engine(engine_cfg) as engine:
        prompt = engine.encode(docs()[1], bos=True)
        await collect(engine, GenRequest("a", prompt, 4))
        shared = SharedIndex(KVIndex(B))
        sub = KVEventSubscriber("w0", engine.kv_endpoints(), shared)
        sub.start()  # late: it replays what it missed
        try:
            full = (len(prompt) - 1) // B * B
            await asyncio.to_thread(wait_until, lambda: shared.matched(prompt, ["w0"])["w0"] >= full, 10.0)
            assert await engine.reset_prefix_cache()
            await asyncio.to_thread(wait_until, lambda: shared.matched(prompt, ["w0"])["w0"] == 0, 10.0)
        finally:
            sub.stop()
            sub.join(5)


def test_the_backend_and_the_clock_are_checked():
    with pytest.raises(EngineConfigError, match="engine_backend must be one of vllm, sim"):
        EngineConfig.from_dict({"model": MODEL, "engine_backend": "simulated"})
    assert EngineConfig.from_dict({"model": MODEL, "engine_backend": "sim"}).engine_backend is EngineBackend.SIM
    with pytest.raises(EngineConfigError, match="sim_time_scale must be within 1..1000"):
        EngineConfig.from_dict({"model": MODEL, "sim_time_scale": 0.5})


async def test_a_slowed_clock_stretches_every_step_and_the_engine_says_its_speed_on_it(engine_cfg):
    """The same request on a clock 20 times slower: 20 times the wall time between its first and
    last tokens, and the speed the engine reports for placement is its profile's, on that clock."""
    from dataclasses import replace

    spans = {}
    for scale in (1.0, 20.0):
        async with sim_engine(replace(engine_cfg, sim_time_scale=scale)) as engine:
            chunks = await collect(engine, GenRequest("r", engine.encode("Q: 1+1\n", bos=True), 40, ignore_eos=True))
            spans[scale] = chunks[-1].finished_at - chunks[-1].first_token_at
            known = engine.known_profile()
            assert known.decode_step_s[1] == pytest.approx(0.001 * scale)
            assert known.prefill_s_per_token == pytest.approx(0.00001 * scale)
    assert spans[20.0] >= 0.99 * 39 * 0.001 * 20  # 39 steps of 1 ms, slowed 20 times: never sooner


def test_the_front_end_load_makes_the_process_spend_its_due_and_no_more():
    import time

    from workers.sim.front_end import FrontEndLoad

    load = FrontEndLoad(per_step_s=0.002, per_token_s=0.0001)
    t0 = time.process_time()
    for _ in range(20):
        load.charge(tokens=10)  # due: 20 x (2 ms + 10 x 0.1 ms) = 60 ms
    spent = time.process_time() - t0
    assert 0.058 <= spent < 0.12  # (what the process spent between making the load and t0 paid a little)
    busy = time.process_time()
    while time.process_time() - busy < 0.1:  # the process's own work pays what is due next
        pass
    t0 = time.process_time()
    load.resume()  # ... but not what it spent while the engine was idle
    load.charge(tokens=0)
    assert time.process_time() - t0 >= 0.0019  # a step's due (less a spin's overshoot carried over)


def test_the_host_load_spins_only_while_the_engine_is_busy():
    import psutil

    from workers.sim.host_load import HostLoad

    load = HostLoad(0.5, nice=None)
    try:
        cpu = psutil.Process(load.proc.pid)

        def spent() -> float:
            return sum(cpu.cpu_times()[:2])

        load.set_busy(True)
        wait_until(lambda: spent() > 0.05, 30.0)
        load.set_busy(False)
        wait_until(lambda: idle(spent), 30.0)
    finally:
        load.close()
    assert load.proc.returncode is not None


def test_a_host_load_period_spends_its_share_in_cpu_and_never_more():
    """A period's polling stops once the share is spent in CPU (or the period is over): over many
    periods the spinner never spends more than the share of their time, however fast the machine.
    Measured in a process of its own (this one's other threads would count in its CPU time)."""
    import subprocess
    import sys

    from workers.sim.host_load import PERIOD_S

    code = ("import time; from workers.sim.host_load import poll_period\n"
            "w, c = time.perf_counter(), time.process_time()\n"
            "for _ in range(40): poll_period(0.3)\n"
            "print(time.perf_counter() - w, time.process_time() - c)")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=root)
    wall, cpu = map(float, out.stdout.split())
    assert wall >= 40 * PERIOD_S * 0.99  # each period lasts its length: the rest is slept
    assert cpu <= 0.3 * wall + 0.01


def idle(spent) -> bool:
    """No CPU spent over a quarter of a second (a process blocked on its pipe spends none)."""
    import time

    before = spent()
    time.sleep(0.25)
    return spent() - before < 0.01


def test_synthetic_documents_fork_as_threadweaver_and_each_thread_writes_its_own_part(tok):
    import random

    from bench.sim_documents import THREAD_MAX, THREAD_MIN, document
    from orchestrator.plan.published import THREADWEAVER as TW

    rng = random.Random(3)
    docs = [document(rng, str(n)) for n in range(4)]
    texts = [d.text for d in docs]
    script = script_of(tok, texts)
    for doc in docs:
        text = doc.text
        assert text.startswith(doc.question) and doc.question.startswith("Q: synthetic ")
        prefix = text[:text.index(TW.tags.plan_close) + len(TW.tags.plan_close)]
        plan = TW.find_plan(prefix)
        assert 2 <= len(plan.outlines) <= 8
        bodies = []
        for outline in plan.outlines:
            header = TW.header_first.format(id=outline.id)  # every thread's prompt has it
            written = tok.decode(script.continuation(tok.encode(prefix + header).ids), skip_special_tokens=False)
            body = written[:written.index(TW.tags.thread_close)]
            work = len(body) - len(f" {outline.text}\n")  # drawn length, a final newline in place of spaces
            assert body.startswith(f" {outline.text}\n") and THREAD_MIN - 1 <= work <= THREAD_MAX + 1
            bodies.append(len(body) + len(TW.tags.thread_close))
        # its critical path: everything written but the threads beside the longest
        assert doc.critical_tokens == len(text) - len(doc.question) - sum(bodies) + max(bodies)
