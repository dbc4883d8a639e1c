"""The engine-limit model of bench/engine_limit.py, on hand-built DAGs."""
from types import SimpleNamespace

import pytest

from bench.engine_limit import (
    EngineCosts,
    JobGaps,
    batch_sizes,
    gaps_ms,
    limit_s,
    overhead_s,
    sequential_limit_s,
    thread_seconds,
)
from orchestrator.plan.dag import ThreadDAG
from orchestrator.protocol.generation import request_id

COSTS = EngineCosts({1: 1.0, 2: 1.2, 4: 1.6}, prefill_s_per_token=0.01)


def test_the_step_is_interpolated_between_measured_batches_and_flat_beyond():
    assert COSTS.step(1) == 1.0 and COSTS.step(3) == pytest.approx(1.4) and COSTS.step(9) == 1.6


def test_a_thread_decodes_at_the_batch_of_the_threads_still_running():
    # 2 tokens with both running (1.2 each), then the longer one alone (1.0 each)
    assert thread_seconds([2, 5], 0, COSTS) == pytest.approx(2 * 1.2)
    assert thread_seconds([2, 5], 1, COSTS) == pytest.approx(2 * 1.2 + 3 * 1.0)
    assert thread_seconds([3, 3, 3, 3], 2, COSTS) == pytest.approx(3 * 1.6)


def fork_dag() -> ThreadDAG:
    dag = ThreadDAG()
    seg = dag.add("segment", tokens=10, prompt_tokens=20)
    threads, join = dag.fork(seg.id, ["1", "2"], depth=1)
    threads[0].tokens, threads[1].tokens = 4, 6
    for t in threads:
        t.prompt_tokens, t.cached_tokens = 34, 32  # two uncached tokens each
    dag.add("segment", [join.id], tokens=5, prompt_tokens=50, cached_tokens=30)
    return dag


def test_the_limit_is_the_longest_path_with_prefills_and_shrinking_batches():
    segment1 = 20 * 0.01 + 10 * 1.0
    block = 2 * 0.01 + 4 * 1.2 + 2 * 1.0  # the longer thread: both run for 4 tokens, then it runs alone
    segment2 = 20 * 0.01 + 5 * 1.0  # the join's uncached tokens re-prefilled
    assert limit_s(fork_dag(), COSTS) == pytest.approx(segment1 + block + segment2)


def test_the_sequential_limit_decodes_every_token_at_batch_1():
    assert sequential_limit_s(fork_dag(), COSTS, prompt_tokens=20) == pytest.approx(20 * 0.01 + 25 * 1.0)


def test_the_overhead_is_the_wall_time_past_the_engine_on_the_critical_path():
    """Engine times from the worker's log: 1.0 (first segment), 0.3 and 0.5 (threads), 0.4 (the
    segment after the join); the job took 2.5 s: 2.5 - (1.0 + 0.5 + 0.4) of it was Loom's."""
    dag = fork_dag()
    seconds = {0: 1.0, 1: 0.3, 2: 0.5, 4: 0.4}
    assert [n.kind for n in dag.nodes] == ["segment", "thread", "thread", "join", "segment"]
    log = {request_id("j", n.id, n.prompt_tokens): {"submitted": 10.0, "finished_at": 10.0 + seconds[n.id]}
           for n in dag.nodes if n.id in seconds}
    record = SimpleNamespace(id="j", dag=dag.to_dict(), started=100.0, finished=102.5)
    assert overhead_s(record, log) == pytest.approx(2.5 - 1.9)


def test_the_gaps_are_the_jobs_time_outside_its_requests():
    """Driver times: the first segment 100.1-101.0, threads 101.3-101.6 and 101.2-101.8, the
    segment after the join 102.0-102.4; the job ran 100.0-102.5. The join node never runs."""
    dag = fork_dag()
    times = {0: (100.1, 101.0), 1: (101.3, 101.6), 2: (101.2, 101.8), 4: (102.0, 102.4)}
    for i, (start, end) in times.items():
        dag.nodes[i].started, dag.nodes[i].ended = start, end
    record = SimpleNamespace(dag=dag.to_dict(), started=100.0, finished=102.5)
    gaps = gaps_ms([record])
    assert gaps == JobGaps(start_ms=pytest.approx(100), fork_ms=pytest.approx(200),
                           join_ms=pytest.approx(200), end_ms=pytest.approx(100))


def test_a_dags_limit_is_measured_at_batch_1_and_at_each_blocks_width():
    dag = fork_dag()
    dag.fork(4, [str(i) for i in range(40)], depth=1)  # 40 threads after the last segment
    assert batch_sizes(fork_dag()) == [1, 2] and batch_sizes(dag) == [1, 2, 32]
