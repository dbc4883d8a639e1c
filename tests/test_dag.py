import pytest

from orchestrator.plan.dag import ThreadDAG


def build():
    dag = ThreadDAG()
    main = dag.add("segment", label="main", tokens=10)
    threads, join = dag.fork(main.id, ["1", "2", "3"], depth=1)
    for t, n in zip(threads, (5, 20, 7)):
        t.tokens = n
    tail = dag.add("segment", [join.id], label="main", tokens=4)
    return dag, main, threads, join, tail


def test_critical_path_is_prefix_plus_longest_thread_plus_tail():
    dag, *_ = build()
    assert dag.total_tokens() == 10 + 5 + 20 + 7 + 4
    assert dag.critical_path_tokens() == 10 + 20 + 4


def test_nested_block_inside_a_thread_extends_that_thread():
    dag, _main, threads, join, _tail = build()
    inner, inner_join = dag.fork(threads[0].id, ["1.1", "1.2"], depth=2)
    inner[0].tokens, inner[1].tokens = 30, 1
    dag.edges.append((inner_join.id, join.id))
    assert dag.critical_path_tokens() == 10 + 5 + 30 + 4


def test_topological_order_respects_edges_and_round_trips():
    dag, *_ = build()
    order = dag.topological_order()
    assert all(order.index(a) < order.index(b) for a, b in dag.edges)
    again = ThreadDAG.from_dict(dag.to_dict())
    assert again.to_dict() == dag.to_dict()


def test_cycle_is_an_error():
    dag = ThreadDAG()
    a = dag.add("segment")
    b = dag.add("segment", [a.id])
    dag.edges.append((b.id, a.id))
    with pytest.raises(ValueError, match="cycle"):
        dag.topological_order()


def test_a_placement_s_record_keeps_the_chosen_worker_and_the_best_others_only():
    from orchestrator.plan.dag import RECORDED_OPTIONS, NodePlacement
    from orchestrator.protocol.segment import Placement, Progress

    workers = [f"w{i}" for i in range(64)]
    costs = {w: 1.0 + i for i, w in enumerate(workers)}  # w0 cheapest
    matched = {w: 16 * i for i, w in enumerate(workers)}  # w63 holds the most
    rec = NodePlacement.of(Placement("w30", "why", costs, matched), Progress())
    assert rec.worker == "w30" and rec.matched_tokens == 16 * 30
    assert list(rec.costs) == ["w30", *workers[:RECORDED_OPTIONS]]
    assert list(rec.matched) == ["w30", *reversed(workers[-RECORDED_OPTIONS:])]
    few = NodePlacement.of(Placement("w1", "why", {"w0": 2.0, "w1": 1.0}, {"w0": 0, "w1": 32}), Progress())
    assert few.costs == {"w1": 1.0, "w0": 2.0} and few.matched == {"w1": 32, "w0": 0}  # a small cluster: all
