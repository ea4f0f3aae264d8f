"""Whether re-creating a pod would move it beside other tenants: the placement half of right-sizing's
repack (`core.rightsizing.repack_hold` is the fleet half).

A pod alone on its GPU holds the whole GPU. If its replacement would be placed beside other tenants, deleting
it frees that GPU. The answer comes from the extender's own filter, prioritize and bind, run on a copy of
the cluster: the same code that will place the replacement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from extender.core.assignment import ASSIGNMENT_ANNOTATION
from extender.core.ledger import Ledger
from extender.engine.cluster import MemoryCluster, PodView
from extender.engine.scheduler import Engine


@dataclass(frozen=True)
class Landing:
    node: str
    gpus: tuple[int, ...]
    co_tenants: int  # other tenants on those GPUs


def co_tenants(ledger: Ledger, uid: str) -> int:
    """Other tenants on the GPUs pod `uid` holds; -1 when it holds none."""
    entry = ledger.entry(uid)
    state = ledger.node(ledger.node_of(uid) or "")
    if entry is None or state is None:
        return -1
    return sum(len(g.slices) - 1 for ga in entry.assignment.gpus if (g := state.gpu(ga.index)) is not None)


def replacement_landings(engine: Engine, cluster: MemoryCluster, pod: PodView, surge: bool = False) -> list[Landing]:
    """Where the extender would put `pod`'s replacement if `pod` were deleted now (with `surge`: placed
    while `pod` still runs, as a rolling update that adds before it removes does): one landing per node at
    the top of its prioritize scores (kube-scheduler picks among those by its own plugins), its co-tenants
    not counting `pod`. Empty when no node passes its filter. Consumes `engine` and `cluster`, which must
    be a copy of the cluster that nothing else uses (`engine.occupancy.synced_engine`)."""
    old = engine.ledger.entry(pod.uid)
    old_gpus = {(engine.ledger.node_of(pod.uid), g.index) for g in old.assignment.gpus} if old and surge else set()
    if not surge:
        engine.forget_pod(pod.uid)
        cluster.remove_pod(pod.uid)
    new = replace(pod, uid=f"{pod.uid}-replacement", name=f"{pod.name}-replacement", node_name=None,
                  phase="Pending", annotations={k: v for k, v in pod.annotations.items() if k != ASSIGNMENT_ANNOTATION})
    cluster.add_pod(new)
    passed = engine.filter(new, names=[n.name for n in cluster.list_nodes()], narrow_candidates=False).passed
    scores = dict(engine.prioritize(new, names=passed))
    top = max(scores.values(), default=None)
    out = []
    for node in sorted(n for n, s in scores.items() if s == top):
        if engine.bind(new.namespace, new.name, new.uid, node):
            continue  # the bind refused: kube-scheduler would retry elsewhere
        entry = engine.ledger.entry(new.uid)
        assert entry is not None
        gpus = tuple(g.index for g in entry.assignment.gpus)
        beside_old = any((node, g) in old_gpus for g in gpus)
        out.append(Landing(node, gpus, co_tenants(engine.ledger, new.uid) - beside_old))
        engine.forget_pod(new.uid)
        cluster.remove_pod(new.uid)
        cluster.add_pod(new)
    return out


def moves_beside_tenants(landings: list[Landing]) -> bool:
    """Every node kube-scheduler might choose puts the replacement beside other tenants."""
    return bool(landings) and all(landing.co_tenants > 0 for landing in landings)
