"""Regression tests for the engine's races (issue 12): each interleaving is forced with hooks, not left
to timing, and each failed on the code before the fix."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.inventory import INVENTORY_ANNOTATION
from extender.core.ledger import burst_region
from extender.core.policy import parse_policy
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.placement import evaluate
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine

WHOLE = {"gpuslice.io/compute": "1000m", "gpuslice.io/memory": "8Gi"}
SMALL = {"gpuslice.io/compute": "125m", "gpuslice.io/memory": "8Gi"}


def gpu_node(name: str, gpus: int = 8) -> NodeView:
    return NodeView(name, allocatable={"amd.com/gpu": str(gpus)})


def pod(name: str, annotations: dict[str, str] = SMALL, namespace: str = "default", **kw: object) -> PodView:
    return PodView(f"uid-{namespace}-{name}", namespace, name, annotations=annotations, **kw)  # type: ignore[arg-type]


class HookedCluster(MemoryCluster):
    """A memory cluster that calls `after_list` once its pod listing is taken (inside a sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.after_list: Callable[[], None] | None = None

    def list_pods(self) -> list[PodView]:
        pods = super().list_pods()
        hook, self.after_list = self.after_list, None
        if hook is not None:
            hook()
        return pods


def engine_on(cluster: MemoryCluster, policy: dict | None = None, **kw: object) -> Engine:
    engine = Engine(cluster, PolicyStore(parse_policy(policy or {})), **kw)  # type: ignore[arg-type]
    assert engine.sync() == []
    return engine


def bound_pods(cluster: MemoryCluster) -> list[PodView]:
    return [p for p in cluster.list_pods() if p.node_name and ASSIGNMENT_ANNOTATION in p.annotations]


@pytest.fixture
def _restore_switch() -> Iterator[None]:
    old = sys.getswitchinterval()
    yield
    sys.setswitchinterval(old)


def test_relist_racing_a_bind_loses_no_slice() -> None:
    """The bind's Binding lands after the relist listed the pod unbound: the slice must survive the swap
    (it used to be committed into the old ledger and lost, and the next pod was given the same GPU)."""
    cluster = HookedCluster()
    cluster.add_node(gpu_node("n0"))
    engine = engine_on(cluster)
    p = pod("p", WHOLE)
    cluster.add_pod(p)
    reserved, finish = threading.Event(), threading.Event()

    def fault(step: str) -> None:
        if step == "reserved":
            reserved.set()
            finish.wait(5)

    engine.fault = fault
    result: list[str] = []
    binder = threading.Thread(target=lambda: result.append(engine.bind("default", "p", p.uid, "n0")))
    binder.start()
    assert reserved.wait(5)
    engine.fault = None

    def let_the_bind_finish() -> None:  # the listing is taken; now the Binding lands and the bind commits
        finish.set()
        binder.join(0.5)  # with the fix the commit waits for the swap instead

    cluster.after_list = let_the_bind_finish
    assert engine.sync() == []
    binder.join(5)
    assert result == [""]
    entry = engine.ledger.entry(p.uid)
    assert entry is not None and not entry.reserved
    # Eight more whole-GPU pods: only seven fit beside p, and no GPU is given twice.
    results = []
    for i in range(8):
        q = pod(f"q{i}", WHOLE)
        cluster.add_pod(q)
        results.append(engine.bind("default", q.name, q.uid, "n0"))
    assert sum(r == "" for r in results) == 7
    assert engine.sync() == []


def test_quota_is_checked_in_the_reserving_critical_section() -> None:
    """Two binds of one namespace on different nodes must not both pass `maxTenants: 1`."""
    cluster = MemoryCluster()
    for n in ("n0", "n1"):
        cluster.add_node(gpu_node(n))
    a_placing, b_started = threading.Event(), threading.Event()

    def slow_placer(req, state, policy):  # type: ignore[no-untyped-def]
        if state.name == "n0":  # bind A decides while bind B checks the quota
            a_placing.set()
            b_started.wait(5)
            threading.Event().wait(0.3)
        return evaluate(req, state, policy)

    engine = engine_on(cluster, {"quotas": {"q": {"maxTenants": 1}}}, bind_placer=slow_placer)
    a, b = pod("a", namespace="q"), pod("b", namespace="q")
    cluster.add_pod(a)
    cluster.add_pod(b)
    results: dict[str, str] = {}
    ta = threading.Thread(target=lambda: results.__setitem__("a", engine.bind("q", "a", a.uid, "n0")))
    ta.start()
    assert a_placing.wait(5)
    b_started.set()
    results["b"] = engine.bind("q", "b", b.uid, "n1")
    ta.join(5)
    assert sorted(results.values())[0] == ""
    assert sum(r == "" for r in results.values()) == 1, results
    assert engine.ledger.usage("q").tenants == 1


def test_node_deleted_during_a_reserve_leaks_no_usage() -> None:
    """The node delete lands after the reserve found the node and before it counted the pod."""
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n0"))
    engine = engine_on(cluster)
    ledger = engine.ledger
    put = ledger._put
    deleter: list[threading.Thread] = []

    def put_while_the_node_goes(node, state):  # type: ignore[no-untyped-def]
        if state.pods and not deleter:
            t = threading.Thread(target=engine.forget_node, args=("n0",))
            deleter.append(t)
            t.start()
            t.join(0.3)  # with the fix the delete waits for the node's lock
        put(node, state)

    ledger._put = put_while_the_node_goes  # type: ignore[method-assign]
    p = pod("p", namespace="team")
    cluster.add_pod(p)
    engine.bind("team", "p", p.uid, "n0")
    deleter[0].join(5)
    assert engine.ledger.node("n0") is None
    assert engine.ledger.usage("team").tenants == 0
    assert engine.ledger.entry(p.uid) is None


def test_counters_are_exact_under_threads(_restore_switch: None) -> None:
    cluster = MemoryCluster()
    for n in ("n0", "n1", "n2"):
        cluster.add_node(gpu_node(n, 1))
    engine = engine_on(cluster)
    huge = pod("huge", {"gpuslice.io/compute": "500m", "gpuslice.io/memory": "900Gi"})
    per_thread, threads = 1500, 8
    sys.setswitchinterval(1e-6)

    def work() -> None:
        for _ in range(per_thread):
            engine.filter(huge, names=["n0", "n1", "n2"])

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert engine.stats.filter_rejections["memory"] == 3 * per_thread * threads


def test_inventory_bad_then_the_same_good_again_is_accepted() -> None:
    cluster = MemoryCluster()
    good = NodeView("n0", annotations={}, allocatable={"amd.com/gpu": "2"})
    cluster.add_node(good)
    engine = engine_on(cluster)
    bad = replace(good, annotations={INVENTORY_ANNOTATION: "not json"})
    assert engine.observe_node(bad) is False
    assert "n0" in engine.stats.skipped_nodes
    assert engine.observe_node(good) is True
    assert "n0" not in engine.stats.skipped_nodes
    assert engine.filter(pod("p"), names=["n0"]).passed == ["n0"]


def test_bind_refuses_a_pod_of_another_scheduler() -> None:
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n0"))
    engine = engine_on(cluster, scheduler_name="gpuslice")
    other = pod("other", scheduler_name="default-scheduler")
    cluster.add_pod(other)
    err = engine.bind("default", "other", other.uid, "n0")
    assert "schedulerName" in err
    assert engine.ledger.entry(other.uid) is None
    mine = pod("mine", scheduler_name="gpuslice")
    cluster.add_pod(mine)
    assert engine.bind("default", "mine", mine.uid, "n0") == ""


@pytest.mark.parametrize("synced", [False, True])
def test_node_names_filter_with_no_gpu_node_is_a_clean_rejection(synced: bool) -> None:
    cluster = MemoryCluster()
    cluster.add_node(NodeView("cpu-only"))
    engine = Engine(cluster, PolicyStore())
    if synced:
        assert engine.sync() == []
    result = engine.filter(pod("p"), names=["cpu-only", "n-unknown"])
    assert result.error == "" and result.passed == []
    assert set(result.failed) | set(result.unresolvable) == {"cpu-only", "n-unknown"}


def test_bind_does_not_take_the_request_of_another_pod_with_the_same_uid() -> None:
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n0", 1))
    engine = engine_on(cluster)
    real = pod("real")
    cluster.add_pod(real)
    evil = PodView(real.uid, "other", "evil",
                   annotations={"gpuslice.io/compute": "1000m", "gpuslice.io/memory": "190Gi"})
    engine.filter(evil, names=["n0"])
    assert engine.bind("default", "real", real.uid, "n0") == ""
    a = engine.assignment_for(real.uid)
    assert a is not None and a.gpus[0].memoryBytes == 8 * 2**30
    assert len(a.gpus[0].cus) < 304


def test_bound_pod_deleted_before_its_bind_commits_frees_its_slice() -> None:
    """The watch's delete lands between the Binding and the ledger commit: the slice must not come back."""
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n0"))
    engine = engine_on(cluster)
    p = pod("p")
    cluster.add_pod(p)

    def fault(step: str) -> None:
        if step == "recorded":
            cluster.remove_pod(p.uid)
            engine.forget_pod(p.uid)

    engine.fault = fault
    engine.bind("default", "p", p.uid, "n0")
    assert engine.ledger.entry(p.uid) is None
    assert engine.ledger.usage("default").tenants == 0


def test_policy_reload_during_a_relist_reaches_the_new_ledger() -> None:
    cluster = HookedCluster()
    cluster.add_node(gpu_node("n0", 1))
    engine = engine_on(cluster)
    text = "burst:\n  sharedFraction: 0.25\n"
    reload = threading.Thread(target=engine.policies.update_text, args=(text,))
    cluster.after_list = lambda: (reload.start(), reload.join(0.3))
    engine.sync()
    reload.join(5)
    assert engine.policies.current.burst.sharedFraction == 0.25
    assert engine.ledger.shared_fraction == 0.25
    state = engine.ledger.node("n0")
    assert state is not None and state.gpus[0].shared == burst_region(state.gpus[0].info, 0.25)


def test_usage_matches_recount_after_bind_and_sync() -> None:
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n0"))
    engine = engine_on(cluster)
    for i in range(5):
        q = pod(f"q{i}")
        cluster.add_pod(q)
        assert engine.bind("default", q.name, q.uid, "n0") == ""
    used = engine.ledger.usage("default")
    recount = [parse_assignment(p.annotations[ASSIGNMENT_ANNOTATION]) for p in bound_pods(cluster)]
    assert used.tenants == len(recount) == 5
    assert used.memory == sum(g.memoryBytes for a in recount for g in a.gpus)


def _bound_pod(name: str, annotations: dict[str, str], node: str = "n0") -> PodView:
    return PodView(f"uid-{name}", "default", name, annotations=annotations, node_name=node, phase="Running")


def test_sync_refuses_an_enormous_cu_range_without_expanding_it() -> None:
    """A bound pod's assignment edited to a huge CU range used to be expanded at every rebuild."""
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n0"))
    huge = ('{"node":"n0","class":"memory-bound","policy":"x","assignedAt":"","gpus":[{"index":0,"id":"n0/gpu0",'
            '"cus":"0-2999999","burstCus":"","memoryBytes":1,"memoryLimitBytes":1}]}')
    cluster.add_pod(_bound_pod("p", {**SMALL, ASSIGNMENT_ANNOTATION: huge}))
    engine = Engine(cluster, PolicyStore())
    start = time.perf_counter()
    problems = engine.sync()
    assert time.perf_counter() - start < 0.5
    assert len(problems) == 1 and "beyond gpuslice's bound" in problems[0]
    assert engine.stats.refused["gpuslice.io/assignment.gpus[].cus"] == 1


def test_sync_survives_a_bound_pod_whose_compute_overflows() -> None:
    cluster = MemoryCluster()
    cluster.add_node(gpu_node("n0"))
    engine = engine_on(cluster)
    p = pod("p")
    cluster.add_pod(p)
    assert engine.bind("default", "p", p.uid, "n0") == ""
    bound_pod = next(x for x in cluster.list_pods() if x.uid == p.uid)
    cluster.add_pod(replace(bound_pod, annotations={**bound_pod.annotations, "gpuslice.io/compute": "1e1000000"}))
    engine.sync()  # used to raise decimal.Overflow: /readyz stayed 503 for good
    assert engine.synced and engine.ledger.entry(p.uid) is not None
