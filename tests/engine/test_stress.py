"""The threaded stress test of issue 12: binds from 32 threads over 100 nodes while relists, pod
deletes, node removals, late watch events and policy reloads run concurrently; then the ledger and
the cluster are audited. GPUSLICE_STRESS_BINDS sets the number of binds (3,000 in the normal suite,
10,000 for the full run); the figures are printed and, with GPUSLICE_STRESS_JSON=<file>, written as JSON."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, parse_assignment
from extender.core.policy import load_policy_text
from extender.engine.cluster import BindError, MemoryCluster, NodeView, PodView
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine

BINDS = int(os.environ.get("GPUSLICE_STRESS_BINDS", "3000"))
THREADS, NODES, GPUS = 32, 100, 8
QUOTA_NS, MAX_TENANTS = "capped", 150
NAMESPACES = ("team-a", "team-b", "team-c", QUOTA_NS)
SHAPES = (("125m", "8Gi"), ("250m", "16Gi"), ("500m", "48Gi"), ("1000m", "64Gi"), ("125m", "40Gi"))
POLICIES = [f"burst:\n  sharedFraction: {f}\nquotas:\n  {QUOTA_NS}:\n    maxTenants: {MAX_TENANTS}\n"
            for f in (0.125, 0.25)]


class StrictCluster(MemoryCluster):
    """A memory cluster that binds only pods it holds, on nodes it holds (as the API server does)."""

    def bind_pod(self, pod: PodView, node: str, annotations: Mapping[str, str]) -> None:
        with self._lock:
            current = self._pods.get(pod.uid)
            if current is None:
                raise BindError(f"pod {pod.key} not found")
            if node not in self._nodes:
                raise BindError(f"node {node} not found")
            if current.node_name:
                raise BindError(f"pod {pod.key} is already bound to {current.node_name}")
            self._store_pod(dc_replace(current, annotations={**current.annotations, **annotations},
                                       node_name=node, phase="Running"))
            self.binds += 1

    def pods_on(self, node: str) -> list[PodView]:
        with self._lock:
            return [p for p in self._pods.values() if p.node_name == node]


@dataclass
class Figures:
    binds: Counter[str] = field(default_factory=Counter)
    chaos: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    max_capped_tenants: int = 0
    seconds: float = 0.0


def _why(err: str) -> str:
    for words, why in (("quota", "quota"), ("being rebuilt", "waited out a relist"), ("not found", "node or pod gone"),
                       ("not in the ledger", "node or pod gone"), ("gpu", "no room on the node")):
        if words in err:
            return why
    return "other" if err else ""


def node_view(i: int) -> NodeView:
    return NodeView(f"n{i:03d}", allocatable={"amd.com/gpu": str(GPUS)})


def assignments(cluster: StrictCluster) -> dict[str, tuple[PodView, Assignment]]:
    out = {}
    for p in cluster.list_pods():
        if p.node_name and ASSIGNMENT_ANNOTATION in p.annotations:
            out[p.uid] = (p, parse_assignment(p.annotations[ASSIGNMENT_ANNOTATION]))
    return out


def run(binds: int, seed: int = 12) -> tuple[Engine, StrictCluster, Figures]:
    cluster = StrictCluster()
    for i in range(NODES):
        cluster.add_node(node_view(i))
    store = PolicyStore(load_policy_text(POLICIES[0]))
    engine = Engine(cluster, store)
    assert engine.sync() == []
    figures = Figures()
    feed = threading.Lock()  # the watch applies one event at a time, in order (kube/watch.py)
    counter = iter(range(binds))
    counter_lock = threading.Lock()
    done = threading.Event()

    def next_bind() -> int | None:
        with counter_lock:
            return next(counter, None)

    def worker(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        mine: list[str] = []
        while (n := next_bind()) is not None:
            if mine and rng.random() < 0.4:  # pods end as others arrive: the cluster churns, it does not just fill
                uid = mine.pop(rng.randrange(len(mine)))
                with feed:
                    cluster.remove_pod(uid)
                    engine.forget_pod(uid)
            compute, memory = rng.choice(SHAPES)
            ns = rng.choice(NAMESPACES)
            pod = PodView(f"uid-{n}", ns, f"p{n}",
                          annotations={"gpuslice.io/compute": compute, "gpuslice.io/memory": memory})
            cluster.add_pod(pod)
            node = f"n{rng.randrange(NODES):03d}"
            err = engine.bind(ns, pod.name, pod.uid, node)
            figures.binds["ok" if not err else "refused"] += 1
            figures.refusals[_why(err)] += bool(err)
            if not err:
                mine.append(pod.uid)
            else:  # kube-scheduler would retry it elsewhere; here it is simply given up
                with feed:
                    cluster.remove_pod(pod.uid)
                    engine.forget_pod(pod.uid)

    def each(action: str, body: Callable[[random.Random], None], period: float) -> Callable[[], None]:
        """A thread that does one kind of chaos every `period` seconds until the binds are done."""
        def loop() -> None:
            rng = random.Random(f"{seed}-{action}")
            while not done.is_set():
                body(rng)
                figures.chaos[action] += 1
                figures.max_capped_tenants = max(figures.max_capped_tenants, engine.ledger.usage(QUOTA_NS).tenants)
                done.wait(period)
        return loop

    def relist(rng: random.Random) -> None:
        engine.sync()

    def delete(rng: random.Random) -> None:
        pods = cluster.list_pods()
        for p in rng.sample(pods, min(10, len(pods))):
            with feed:
                cluster.remove_pod(p.uid)
                engine.forget_pod(p.uid)

    def late_event(rng: random.Random) -> None:  # a "pod bound" event, as the watch delivers it
        pods = cluster.list_pods()
        for p in rng.sample(pods, min(10, len(pods))):
            with feed:
                view = cluster.pod_by_uid(p.uid)
                if view is not None:
                    engine.observe_pod(view)

    removed: list[int] = []

    def node_churn(rng: random.Random) -> None:
        if removed and rng.random() < 0.5:
            i = removed.pop()
            with feed:
                cluster.add_node(node_view(i))
                engine.observe_node(node_view(i))
            return
        i = rng.randrange(NODES)
        if i in removed:
            return
        removed.append(i)
        name = node_view(i).name
        with feed:  # the node goes; then its pods are deleted (the pod GC)
            cluster.remove_node(name)
            engine.forget_node(name)
        for p in cluster.pods_on(name):
            with feed:
                cluster.remove_pod(p.uid)
                engine.forget_pod(p.uid)

    versions = iter(range(1, 1 << 30))

    def reload(rng: random.Random) -> None:
        store.update_text(POLICIES[next(versions) % 2])

    # A relist rebuilds every ledger (a watch resumed after 410 Gone); the rest are a busy cluster's churn.
    chaos = [threading.Thread(target=each(name, body, period)) for name, body, period in
             (("relist", relist, 1.0), ("delete", delete, 0.01), ("event", late_event, 0.01),
              ("node", node_churn, 0.05), ("reload", reload, 0.1))]
    start = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in chaos + workers:
        t.start()
    for w in workers:
        w.join()
    done.set()
    for t in chaos:
        t.join()
    figures.seconds = time.perf_counter() - start
    return engine, cluster, figures


def audit(engine: Engine, cluster: StrictCluster, figures: Figures) -> dict[str, object]:
    truth = assignments(cluster)
    # The cluster's pods: no CU guaranteed twice, no GPU over its memory, the quota kept.
    cus: dict[tuple[str, int], set[int]] = defaultdict(set)
    memory: dict[tuple[str, int], int] = defaultdict(int)
    for _, a in truth.values():
        for g in a.gpus:
            key = (a.node, g.index)
            assert not cus[key] & g.cus, f"CUs {sorted(cus[key] & g.cus)[:8]} of {key} guaranteed twice"
            cus[key] |= g.cus
            memory[key] += g.memoryBytes
    capacity = {(s.name, g.info.index): g.info.memoryBytes for s in engine.ledger.nodes() for g in s.gpus}
    assert all(used <= capacity[key] for key, used in memory.items())
    capped = sum(1 for p, _ in truth.values() if p.namespace == QUOTA_NS)
    assert capped <= MAX_TENANTS and figures.max_capped_tenants <= MAX_TENANTS
    # The ledger: no overlap, no GPU over capacity, exactly the cluster's pods, usage = a recount.
    held: dict[str, str] = {}
    for state in engine.ledger.nodes():
        for g in state.gpus:
            seen: set[int] = set()
            for s in g.slices:
                assert not seen & s.cus
                seen |= s.cus
            assert g.memory_used <= g.info.memoryBytes
        for uid, e in state.pods.items():
            assert not e.reserved, f"reservation of {e.pod.key} left behind"
            held[uid] = state.name
    assert held == {uid: a.node for uid, (_, a) in truth.items()}
    for ns in NAMESPACES:
        mine = [(p, a) for p, a in truth.values() if p.namespace == ns]
        used = engine.ledger.usage(ns)
        assert used.tenants == len(mine)
        assert used.memory == sum(g.memoryBytes for _, a in mine for g in a.gpus)
        assert used.compute_millis == sum(engine.ledger.entry(p.uid).compute_millis * len(a.gpus)  # type: ignore[union-attr]
                                          for p, a in mine)
    assert engine.sync() == []  # a rebuild from the cluster finds nothing to object to
    return {"binds": sum(figures.binds.values()), "bound": figures.binds["ok"], "refused": figures.binds["refused"],
            "threads": THREADS, "nodes": NODES, "seconds": round(figures.seconds, 2),
            "binds_per_second": round(sum(figures.binds.values()) / figures.seconds, 1),
            "chaos": dict(figures.chaos), "refusals": {k: v for k, v in figures.refusals.items() if k},
            "pods_bound_at_end": len(truth),
            "max_capped_tenants": figures.max_capped_tenants, "engine_binds": dict(engine.stats.binds),
            "conflicts_after_bind": engine.stats.binds["conflict-after-bind"]}


def test_concurrent_binds_relists_deletes_node_removals_and_reloads_keep_the_ledger_true() -> None:
    engine, cluster, figures = run(BINDS)
    result = audit(engine, cluster, figures)
    print("\nstress:", json.dumps(result))
    if os.environ.get("GPUSLICE_STRESS_JSON"):
        with open(os.environ["GPUSLICE_STRESS_JSON"], "w") as f:
            json.dump(result, f, indent=2)
    assert figures.binds["ok"] > BINDS // 4  # the run exercised real binds, not only refusals
    assert all(figures.chaos[k] > 0 for k in ("relist", "delete", "event", "node", "reload"))
