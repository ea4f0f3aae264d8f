from __future__ import annotations

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.engine.demo import FIXTURE_NODES, GPU_NODES, PENDING, TENANTS, demo_cluster
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine


def test_demo_cluster_rebuilds_without_problems() -> None:
    cluster = demo_cluster()
    engine = Engine(cluster, PolicyStore())
    assert engine.sync() == []
    assert engine.stats.skipped_nodes == {}
    assert sorted(engine.ledger.node_names()) == sorted([*GPU_NODES, *FIXTURE_NODES])
    for name in GPU_NODES:
        gpus = engine.ledger.node(name).gpus
        assert len(gpus) == 8 and all(g.info.model == "MI300X" and g.info.hiveId for g in gpus)
        assert {g.info.numaNode for g in gpus} == {0, 1}
    for name in FIXTURE_NODES:
        assert len(engine.ledger.node(name).gpus) == 8


def test_demo_tenants_are_bound_with_assignments_of_both_classes() -> None:
    cluster = demo_cluster()
    pods = {p.uid: p for p in cluster.list_pods()}
    classes = set()
    for t in TENANTS:
        pod = pods[t.uid]
        a = parse_assignment(pod.annotations[ASSIGNMENT_ANNOTATION])
        assert pod.node_name == t.node == a.node
        classes.add(a.workload_class)
    assert classes == {"memory-bound", "compute-bound"}
    for p in PENDING:
        assert pods[p.uid].node_name is None and ASSIGNMENT_ANNOTATION not in pods[p.uid].annotations


def test_demo_clusters_are_independent() -> None:
    a, b = demo_cluster(), demo_cluster()
    a.remove_pod(TENANTS[0].uid)
    assert len(b.list_pods()) == len(TENANTS) + len(PENDING)
