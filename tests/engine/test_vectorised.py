"""The column (numpy) filter and prioritize give the per-node `check` and `rank` answers, on ledgers
changed every way the ledger changes: reserve, commit, release, expire, set_node, remove_node, a
new burst fraction, and other policies."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.ledger import Ledger, PodRef
from extender.core.policy import Policy, parse_policy
from extender.core.requests import SliceRequest, parse_slice_request
from extender.engine.cluster import MemoryCluster, PodView
from extender.engine.demo import mi300x_inventory
from extender.engine.placement import build_assignment, check, evaluate, rank, to_score
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine

CLASSES = ("memory-bound", "compute-bound")
NODES = [f"n{i}" for i in range(5)]


def request(millis: int, limit_extra: int, gib: int, cls: str, count: int) -> SliceRequest:
    return SliceRequest(vendor="amd", compute_millis=millis, compute_limit_millis=min(1000, millis + limit_extra),
                        memory_bytes=gib * 2**30, memory_limit_bytes=(gib + 4) * 2**30, count=count,
                        workload_class=cls)  # type: ignore[arg-type]


requests = st.builds(request, st.sampled_from([50, 125, 250, 375, 500, 750, 1000]) | st.integers(10, 1000),
                     st.sampled_from([0, 0, 125, 500]), st.integers(1, 120), st.sampled_from(CLASSES),
                     st.sampled_from([1, 1, 1, 2, 4, 8]))
policies = st.builds(
    lambda rounding, max_mb, max_cb, budget, strategy, over: parse_policy({
        "rounding": {"mode": rounding},
        "classes": {"maxMemoryBoundPerGpu": max_mb, "maxComputeBoundPerGpu": max_cb, "bandwidthBudget": budget},
        "scoring": {"strategy": strategy}, "overcommit": {"memory": over}}),
    st.sampled_from(["balanced", "exact", "powerOfTwo"]),
    st.sampled_from([None, 1, 2]), st.sampled_from([None, 1, 2]), st.sampled_from([None, 0.8, 1.0]),
    st.sampled_from(["binpack", "spread"]), st.sampled_from([1.0, 1.5]))

ops = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(NODES), requests, st.booleans(), st.integers(1, 6)),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("commit"), st.integers(0, 40)),
    st.tuples(st.just("expire"), st.floats(0, 20)),
    st.tuples(st.just("set_node"), st.sampled_from(NODES), st.sampled_from([4, 8, 10]),
              st.one_of(st.none(), st.integers(0, 9)), st.sampled_from(["hive", "numa", "none"])),
    st.tuples(st.just("remove_node"), st.sampled_from(NODES)),
    st.tuples(st.just("burst"), st.sampled_from([0.0, 0.125, 0.25])),
)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def fresh_ledger(policy: Policy, names: list[str] = NODES) -> tuple[Ledger, Clock]:
    """A ledger on its own clock, holding empty MI300X nodes `names`."""
    clock = Clock()
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory, clock)
    for name in names:
        ledger.set_node(name, mi300x_inventory(name))
    return ledger, clock


def engine_on(ledger: Ledger, policy: Policy) -> Engine:
    """An engine answering from `ledger`."""
    engine = Engine(MemoryCluster(), PolicyStore(policy))
    engine.ledger = ledger
    return engine


def apply(ledger: Ledger, clock: Clock, op: tuple, policy: Policy, uids: list[str]) -> None:
    kind = op[0]
    if kind == "reserve":
        _, name, req, bound, times = op
        for _ in range(times):
            state = ledger.node(name)
            if state is None:
                return
            fit = evaluate(req, state, policy)
            if fit.ok:
                uid = f"u{len(uids)}"
                uids.append(uid)
                ledger.reserve(PodRef(uid, "ns", uid), build_assignment(req, name, fit.choices, policy),
                               req.workload_class, req.compute_millis, None if bound else 10.0)
    elif kind in ("release", "commit") and uids:
        uid = uids[op[1] % len(uids)]
        ledger.release(uid) if kind == "release" else ledger.commit(uid)
    elif kind == "expire":
        clock.now += op[1]
        ledger.expire()
    elif kind == "set_node":
        _, name, count, unhealthy, topology = op
        gpus = mi300x_inventory(name, count)
        if topology != "hive":  # NUMA nodes only, or no topology at all
            gpus = [replace(g, hiveId=None, numaNode=g.numaNode if topology == "numa" else None) for g in gpus]
        if unhealthy is not None and unhealthy < count:
            gpus[unhealthy] = replace(gpus[unhealthy], healthy=False)
        ledger.set_node(name, gpus)
    elif kind == "remove_node":
        ledger.remove_node(op[1])
    elif kind == "burst":
        ledger.set_burst_fraction(op[1])


def pod_for(req: SliceRequest, uid: str) -> PodView:
    ann = {"gpuslice.io/compute": f"{req.compute_millis}m", "gpuslice.io/memory": f"{req.memory_bytes // 2**30}Gi",
           "gpuslice.io/computeLimit": f"{req.compute_limit_millis}m", "gpuslice.io/class": req.workload_class,
           "gpuslice.io/count": str(req.count)}
    return PodView(uid, "ns", f"p-{uid}", annotations=ann)


@settings(max_examples=150, deadline=None)
@given(policy=policies, steps=st.lists(ops, max_size=40), req=requests, holder=st.booleans())
def test_columns_agree_with_check_and_rank(policy: Policy, steps: list[tuple], req: SliceRequest,
                                           holder: bool) -> None:
    ledger, clock = fresh_ledger(policy)
    uids: list[str] = []
    for op in steps:
        apply(ledger, clock, op, policy, uids)
    engine = engine_on(ledger, policy)
    # Sometimes the pod itself holds a slice (a retried filter): it is judged as if freed.
    uid = uids[0] if holder and uids else "fresh"
    pod = pod_for(req, uid)
    parsed = engine.filter(pod, names=[*NODES, "ghost"])
    r = parse_slice_request(pod.labels, pod.annotations, policy)
    assert r is not None
    expect_pass, expect_fail = [], {}
    expect_categories = Counter({"unknown-node": 1})  # the ghost
    for name in NODES:
        state = ledger.node(name)
        if state is None:
            expect_fail[name] = "gpuslice: node has no GPU inventory known to gpuslice yet"
            expect_categories["unknown-node"] += 1
            continue
        fit = check(r, state.without(uid), policy)
        if fit.ok:
            expect_pass.append(name)
        else:
            expect_fail[name] = f"gpuslice: {fit.reason}"
            expect_categories[fit.category] += 1
    assert parsed.passed == expect_pass
    assert +engine.stats.filter_rejections == expect_categories
    assert {k: v for k, v in parsed.failed.items() if k != "ghost"} == expect_fail
    scores = dict(engine.prioritize(pod, names=NODES))
    for name in NODES:
        state = ledger.node(name)
        want = 0 if state is None else to_score(rank(r, state.without(uid), policy))
        assert scores[name] == want, name


def test_class_rule_and_bandwidth_words_match_check() -> None:
    policy = parse_policy({"classes": {"maxMemoryBoundPerGpu": 1, "bandwidthBudget": 0.6}})
    ledger, clock = fresh_ledger(policy, NODES[:2])
    uids: list[str] = []
    apply(ledger, clock, ("reserve", "n0", request(125, 0, 8, "memory-bound", 1), True, 8), policy, uids)
    apply(ledger, clock, ("reserve", "n1", request(125, 0, 8, "compute-bound", 1), True, 24), policy, uids)
    engine = engine_on(ledger, policy)
    for cls, word in (("memory-bound", "memory-bound tenants already"), ("compute-bound", "would exceed the budget")):
        req = request(125, 0, 8, cls, 1)
        result = engine.filter(pod_for(req, "x"), names=NODES[:2])
        assert any(word in reason for reason in result.failed.values()), result.failed
        for name, reason in result.failed.items():
            assert reason == f"gpuslice: {check(req, ledger.node(name), policy).reason}"


def test_readers_never_crash_while_the_ledger_changes() -> None:
    import threading

    policy = parse_policy({})
    ledger, clock = fresh_ledger(policy)
    engine = engine_on(ledger, policy)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        uids: list[str] = []
        i = 0
        while not stop.is_set():
            i += 1
            name = NODES[i % len(NODES)]
            try:
                apply(ledger, clock, ("reserve", name, request(250, 0, 16, CLASSES[i % 2], 1), i % 3 == 0, 2),
                      policy, uids)
                apply(ledger, clock, ("release", i * 7), policy, uids)
                if i % 5 == 0:  # new names and wider nodes grow the index while it is read
                    extra = f"x{i}"
                    ledger.set_node(extra, mi300x_inventory(extra, 8 + i % 9))
                    ledger.remove_node(f"x{i - 5}")
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                errors.append(exc)
                return

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for k in range(150):
            req = request(125 + 125 * (k % 4), 0, 8 + k % 40, CLASSES[k % 2], 1 + (k % 3 == 0))
            names = [*NODES, *ledger.node_names()]
            engine.filter(pod_for(req, f"r{k}"), names=names)
            engine.prioritize(pod_for(req, f"r{k}"), names=names)
    finally:
        stop.set()
        writer.join()
    assert not errors


def test_nodes_that_share_a_message_get_their_own_numbers() -> None:
    """Failing nodes are worded once per distinct message: nodes whose rejected GPUs differ only in numbers
    the words do not show share one text, and nodes that differ in a shown number (the GPU, its free CUs or
    memory, the count of rejected GPUs) do not."""
    policy = parse_policy({})
    names = [f"m{i}" for i in range(24)]
    ledger, clock = fresh_ledger(policy, names)
    uids: list[str] = []
    for i, name in enumerate(names):
        # Different tenants per node: memory differs on every node, CUs on some, and some GPUs stay free.
        apply(ledger, clock, ("reserve", name, request(125 * (1 + i % 3), 0, 4 + i, CLASSES[i % 2], 1), True,
                              2 + i % 7), policy, uids)
        apply(ledger, clock, ("reserve", name, request(750, 0, 100 + i, CLASSES[0], 1), True, i % 9), policy, uids)
    engine = engine_on(ledger, policy)
    for req in (request(500, 0, 8, "compute-bound", 2), request(250, 0, 120, "memory-bound", 1),
                request(125, 0, 185, "memory-bound", 1), request(1000, 0, 8, "compute-bound", 8)):
        result = engine.filter(pod_for(req, "x"), names=names)
        assert result.failed, req
        for name, reason in result.failed.items():
            assert reason == f"gpuslice: {check(req, ledger.node(name), policy).reason}", name


def test_prioritize_after_filter_sees_nodes_removed_and_slots_reused_in_between() -> None:
    """prioritize gets the list filter passed, whose slots filter remembers; a node removed between the
    two, its slot taken by a new node, must not be scored as that new node."""
    policy = parse_policy({})
    ledger, clock = fresh_ledger(policy)
    engine = engine_on(ledger, policy)
    req = request(250, 0, 16, "memory-bound", 1)
    pod = pod_for(req, "p")
    passed = engine.filter(pod, names=NODES).passed
    assert passed == NODES
    ledger.remove_node("n1")
    ledger.set_node("new", mi300x_inventory("new"))  # takes n1's slot
    scores = dict(engine.prioritize(pod, names=passed))
    assert scores["n1"] == 0
    for name in passed:
        state = ledger.node(name)
        assert scores[name] == (0 if state is None else to_score(rank(req, state, policy)))


def test_a_retried_filter_sees_writes_made_since_the_last_try() -> None:
    """Filter keeps its last answer for failing nodes while no write reaches the index; a retry after a
    write must word the rows as they are now."""
    policy = parse_policy({})
    ledger, clock = fresh_ledger(policy)
    uids: list[str] = []
    for name in NODES:  # a tenant or two on every node: eight whole GPUs fit nowhere
        apply(ledger, clock, ("reserve", name, request(125, 0, 8, "compute-bound", 1), True, 2), policy, uids)
    engine = engine_on(ledger, policy)
    req = request(1000, 0, 8, "memory-bound", 8)
    pod = pod_for(req, "p")
    first = engine.filter(pod, names=NODES)
    assert set(first.failed) == set(NODES)
    assert engine.filter(pod, names=NODES).failed == first.failed  # a retry, nothing changed
    apply(ledger, clock, ("release", 0), policy, uids)  # frees CUs on one node
    retry = engine.filter(pod, names=NODES)
    assert retry.failed != first.failed
    for name, reason in retry.failed.items():
        assert reason == f"gpuslice: {check(req, ledger.node(name), policy).reason}", name
