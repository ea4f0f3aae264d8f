"""DRA tenants for the extender's ledger: ResourceClaims of driver `gpu.gpuslice.io` seen as tenants.

The node agent writes each prepared share's exact CU sets to the claim's `status.devices[].data`
(see agent/dra/kube.py). A claim holding such devices becomes a tenant view — a PodView named
`claim:<name>`, bound to the pool's node, carrying the equivalent `gpuslice.io/assignment` — so the
engine's one ledger rebuild and event path count DRA shares next to extender pods, and neither path
hands out CUs or memory the other holds.

A claim kube-scheduler has allocated (`status.allocation.devices.results`: pool = node, device = the
GPU's device name, `consumedCapacity`) that no agent has prepared yet holds its consumed CUs and memory
too: its view carries a *provisional* assignment (annotation PROVISIONAL) whose XCC-complete CU sets
are chosen from the GPU's free CUs by the engine's chooser when the event is applied, under the feed
lock; the agent's real sets replace them when the claim is prepared. Without that, the extender could
bind a pod onto capacity the claim was allocated, and the agent would refuse the claim at Prepare.
A claim on a device not in the node's inventory (yet) is logged and tried again at the next relist.
Shadow claims (kube/shadow_claims.py, label SHADOW_OF) mirror extender pods the ledger already holds:
never counted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from kubernetes.client import ApiClient, ApiException, ResourceV1Api
from kubernetes.watch.watch import iter_resp_lines

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment, now_rfc3339, parse_assignment
from extender.core.errors import AssignmentError
from extender.core.inventory import device_name
from extender.core.layout import choose_cus
from extender.core.ledger import NodeState
from extender.core.quantity import parse_bytes
from extender.engine.cluster import MemoryCluster, NodeView, PodView
from extender.engine.dra_requests import COMPUTE_UNITS, DRIVER, MEMORY
from extender.engine.policy_store import PolicyStore
from extender.engine.scheduler import Engine
from extender.kube.cluster import KubeCluster
from extender.kube.raw import list_items

log = logging.getLogger(__name__)

SHADOW_OF = "gpuslice.io/shadow-of-pod"  # label: the UID of the pod whose share the claim shows
PROVISIONAL = "gpuslice.io/provisional"  # on a claim view: CU sets chosen here, not yet the agent's
WATCH_SECONDS = 240
BACKOFF_MAX = 30.0


def claim_assignment(obj: Mapping[str, Any]) -> str | None:
    """The assignment JSON of a claim's prepared shares of this driver, or None if it holds none."""
    status = obj.get("status") or {}
    if not status.get("allocation"):
        return None
    mine = [d for d in status.get("devices") or [] if d.get("driver") == DRIVER and isinstance(d.get("data"), dict)]
    if not mine or len({d.get("pool") for d in mine}) != 1:
        return None
    data = [d["data"] for d in mine]
    text = json.dumps({"node": mine[0]["pool"], "class": data[0].get("class"), "policy": DRIVER,
                       "assignedAt": (obj.get("metadata") or {}).get("creationTimestamp", ""),
                       "gpus": [{k: g.get(k) for k in ("cus", "burstCus", "memoryBytes", "memoryLimitBytes", "id")}
                                | {"index": g.get("gpu")} for g in data]})
    try:
        parse_assignment(text)
    except AssignmentError as exc:
        meta = obj.get("metadata") or {}
        log.warning("claim %s/%s: prepared shares not counted: %s", meta.get("namespace"), meta.get("name"), exc)
        return None
    return text


def claim_view(obj: Mapping[str, Any]) -> PodView:
    """A claim as a tenant view; without prepared shares of this driver it carries no assignment."""
    meta = obj.get("metadata") or {}
    text = claim_assignment(obj)
    return PodView(uid=meta.get("uid", ""), namespace=meta.get("namespace", ""), name=f"claim:{meta.get('name', '')}",
                   annotations={ASSIGNMENT_ANNOTATION: text} if text else {},
                   node_name=json.loads(text)["node"] if text else None,
                   phase="Running" if text else "Pending", deleting=bool(meta.get("deletionTimestamp")),
                   resource_version=meta.get("resourceVersion"))


def allocated_shares(obj: Mapping[str, Any]) -> tuple[str, dict[str, tuple[int, int]]] | None:
    """(node, {device name: (CUs, memory bytes)}) that kube-scheduler allocated to a claim from this
    driver, summed per device; None for a claim with no such allocation, on several nodes, with an
    unreadable consumed capacity, or a shadow claim (it mirrors an extender pod the ledger already holds)."""
    meta = obj.get("metadata") or {}
    if SHADOW_OF in (meta.get("labels") or {}):
        return None
    alloc = (obj.get("status") or {}).get("allocation") or {}
    mine = [r for r in (alloc.get("devices") or {}).get("results") or [] if r.get("driver") == DRIVER]
    if not mine or len({r.get("pool") for r in mine}) != 1:
        return None
    held: dict[str, tuple[int, int]] = {}
    try:
        for r in mine:
            used = r.get("consumedCapacity") or {}
            cus, memory = parse_bytes(used[COMPUTE_UNITS]), parse_bytes(used[MEMORY])  # bounded, whole, >= 0
            before = held.get(r.get("device", ""), (0, 0))
            held[r.get("device", "")] = (before[0] + cus, before[1] + memory)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("claim %s/%s: allocation not counted: consumedCapacity %s", meta.get("namespace"),
                    meta.get("name"), exc)
        return None
    return mine[0]["pool"], held


def provisional_assignment(obj: Mapping[str, Any], state: NodeState | None, workload_class: str) -> str | None:
    """An allocated, unprepared claim's assignment JSON with CU sets chosen from its GPUs' free CUs by the
    engine's own chooser (the agent's real sets replace them once it prepares the claim); None, logged,
    when a device is not (yet) in the node's inventory or its GPU has no such XCC-complete set free."""
    shares = allocated_shares(obj)
    meta = obj.get("metadata") or {}
    if shares is None:
        return None
    node, held = shares
    gpus = {device_name(g.info): g for g in state.gpus} if state is not None else {}
    out = []
    for device, (cus, memory) in sorted(held.items()):
        gpu = gpus.get(device)
        chosen = choose_cus(gpu.free_cus, cus, gpu.info.xcds) if gpu is not None else None
        if gpu is None or chosen is None:
            log.warning("claim %s/%s: allocated %s CUs of %s/%s not counted yet (%s)", meta.get("namespace"),
                        meta.get("name"), cus, node, device, "no such GPU in the node's inventory" if gpu is None
                        else "no XCC-complete set of that size is free")
            return None
        out.append(GpuAssignment(gpu.info.index, gpu.info.id, chosen, frozenset(), memory, memory))
    at = meta.get("creationTimestamp") or now_rfc3339()
    return Assignment(node, tuple(out), workload_class, DRIVER, at).to_json()


def provisional_view(view: PodView, text: str) -> PodView:
    """A claim's view holding a provisional assignment (marked PROVISIONAL) on the allocation's node."""
    return replace(view, annotations={ASSIGNMENT_ANNOTATION: text, PROVISIONAL: "true"},
                   node_name=json.loads(text)["node"], phase="Running")


def provisional_views(items: list[dict[str, Any]], nodes: list[NodeView], tenants: list[PodView]) -> list[PodView]:
    """For one-shot readers (`top`, `plan --kubeconfig`): the allocated, unprepared claims among `items`
    as provisional tenant views, their CU sets chosen one after another around `tenants` (bound pods and
    prepared claims) with the default policy's burst region — the amounts are the allocation's."""
    pending = [i for i in items if not holds_slices(claim_view(i)) and allocated_shares(i) is not None]
    if not pending:
        return []
    cluster = MemoryCluster()
    for n in nodes:
        cluster.add_node(n)
    for t in tenants:
        cluster.add_pod(t)
    engine = Engine(cluster, PolicyStore())
    engine.sync()
    out = []
    for obj in pending:
        shares = allocated_shares(obj)
        text = provisional_assignment(obj, engine.ledger.node(shares[0]) if shares else None,
                                      engine.policies.current.classes.default)
        if text is not None:
            out.append(provisional_view(claim_view(obj), text))
            engine.observe_pod(out[-1])
    return out


def holds_slices(view: PodView) -> bool:
    return ASSIGNMENT_ANNOTATION in view.annotations


def list_claims(api: ApiClient) -> tuple[list[dict[str, Any]], str]:
    """Every ResourceClaim's JSON and the list's resourceVersion; ([], "") from an API server without
    resource.k8s.io/v1."""
    try:
        return list_items(ResourceV1Api(api).list_resource_claim_for_all_namespaces)
    except ApiException as exc:
        if exc.status == 404:
            return [], ""
        raise


def _uid(obj: Mapping[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("uid", "")


class ClaimWatch:
    """List-then-watch of ResourceClaims into the cluster's claim views and the engine's ledger.

    `feed` is the pod/node watch's lock, so claim events never interleave with a ledger rebuild."""

    def __init__(self, api: ApiClient, cluster: KubeCluster, engine: Engine, feed: threading.RLock,
                 on_freed: Callable[[str], None] | None = None) -> None:
        self.resource = ResourceV1Api(api)
        self.api = api
        self.cluster = cluster
        self.engine = engine
        self.feed = feed
        self.on_freed = on_freed
        self._stop = threading.Event()
        self.events = 0
        self._held: dict[str, tuple[str, PodView]] = {}  # provisional views by claim uid (see view_of)
        self._counted: dict[str, PodView] = {}  # the view the ledger holds for each claim uid

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="watch-resourceclaims", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def relist(self) -> str:
        items, rv = list_claims(self.api)
        if rv:  # DRA pods' requests for filter and prioritize (engine/dra_requests.py)
            self.engine.claims.replace(items)
        with self.feed:
            views = [v for v in map(claim_view, items) if holds_slices(v)]
            prepared = {v.uid for v in views}
            pending = [i for i in items if (i.get("metadata") or {}).get("uid") not in prepared
                       and allocated_shares(i) is not None]
            kept = [self._held[uid][1] for uid in map(_uid, pending) if uid in self._held]
            gone = self.cluster.replace_claims(views + kept)
            for uid in gone:
                self._held.pop(uid, None)
                self._counted.pop(uid, None)
                self.engine.forget_pod(uid)
            for view in views + kept:
                self._count(view)
            for obj in pending:  # the rest choose their provisional CU sets around everything above
                self._place("ADDED", obj)
        return rv

    def view_of(self, obj: Mapping[str, Any]) -> PodView:
        """The claim's tenant view: its prepared shares, else (allocated, unprepared) provisional CU sets
        chosen now from the ledger's free CUs — the same set again while its allocation stays the same.
        Call under the feed lock, so the free CUs it chooses from are the ones it is counted against."""
        view = claim_view(obj)
        if holds_slices(view):
            return view
        shares = allocated_shares(obj)
        if shares is None:
            return view
        signature, uid = json.dumps(shares, sort_keys=True), _uid(obj)
        held = self._held.get(uid)
        if held is not None and held[0] == signature:
            return held[1]
        text = provisional_assignment(obj, self.engine.ledger.node(shares[0]),
                                      self.engine.policies.current.classes.default)
        if text is None:
            return view
        view = provisional_view(view, text)
        self._held[uid] = (signature, view)
        return view

    def _count(self, view: PodView) -> None:
        """Hold the view in the ledger, replacing what the claim held before if that was another view
        (a provisional set the agent's prepared one replaces, or one chosen for an older allocation)."""
        if view.annotations.get(PROVISIONAL) is None:
            self._held.pop(view.uid, None)
        before = self._counted.get(view.uid)
        if before is not None and before is not view and before.annotations != view.annotations:
            self.engine.forget_pod(view.uid)
        self._counted[view.uid] = view
        self.engine.observe_pod(view)

    def _run(self) -> None:
        delay, rv = 0.5, ""
        while not self._stop.is_set():
            try:
                rv = rv or self.relist()
                if not rv:  # no resource.k8s.io/v1 here: look again now and then
                    self._stop.wait(BACKOFF_MAX)
                    continue
                rv = self._stream(rv)
                delay = 0.5
            except ApiException as exc:
                rv = "" if exc.status == 410 else rv
                delay = self._wait(delay, exc)
            except Exception as exc:
                delay = self._wait(delay, exc)

    def _wait(self, delay: float, exc: Exception) -> float:
        log.warning("resourceclaim watch failed (%s); retrying in %.1fs", exc, delay)
        self._stop.wait(delay)
        return min(delay * 2, BACKOFF_MAX)

    def _stream(self, rv: str) -> str:
        resp = self.resource.list_resource_claim_for_all_namespaces(
            watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
            _preload_content=False, _request_timeout=(5, WATCH_SECONDS + 30))
        try:
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                if event.get("type") != "BOOKMARK":
                    if event.get("type") == "DELETED":
                        self.engine.claims.drop(obj)
                    else:
                        self.engine.claims.put(obj)
                    self.event(event.get("type", ""), obj)
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
        finally:
            resp.close()
            resp.release_conn()
        return rv

    def event(self, etype: str, obj: Mapping[str, Any]) -> None:
        """One watch event of a claim, its view made and applied under the feed lock."""
        with self.feed:
            if etype == "DELETED":
                self.apply(etype, claim_view(obj))
            else:
                self._place(etype, obj)

    def _place(self, etype: str, obj: Mapping[str, Any]) -> None:
        """Apply the claim's view. A bind (binds take no feed lock) may take a provisional set between
        its choice and its count: then choose again, once; still refused, the claim is left uncounted
        (and out of the cluster's views) until its next event or relist."""
        for _ in range(2):
            view = self.view_of(obj)
            self.apply(etype, view)
            if view.annotations.get(PROVISIONAL) is None or self.engine.ledger.entry(view.uid) is not None:
                return
            self._held.pop(view.uid, None)
            self._counted.pop(view.uid, None)
            self.cluster.drop_claim(view.uid)

    def apply(self, etype: str, view: PodView) -> None:
        """One claim event: counted while it holds prepared shares, forgotten once it does not."""
        with self.feed:
            held = self.engine.ledger.entry(view.uid)
            if etype == "DELETED" or not holds_slices(view):
                self._held.pop(view.uid, None)
                self._counted.pop(view.uid, None)
                self.cluster.drop_claim(view.uid)
                self.engine.forget_pod(view.uid)
            else:
                self.cluster.put_claim(view)
                self._count(view)
            self.events += 1
        if held is not None and self.engine.ledger.entry(view.uid) is None and self.on_freed is not None:
            self.on_freed(held.assignment.node)
