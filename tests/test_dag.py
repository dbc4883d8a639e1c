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
