"""Shadow ResourceClaims: the extender's pods made visible to kube-scheduler's DRA allocator.

kube-scheduler allocates a DRA claim from the ResourceSlices less what *allocated claims* consume; it
does not see pods the extender placed, so it could put a claim on a GPU they fill, and the agent would
then refuse it at Prepare. For every extender pod bound to a node whose agent publishes a
`gpu.gpuslice.io` ResourceSlice, the extender therefore keeps one *shadow* claim in the pod's
namespace: allocated (never reserved for anyone, never prepared), one result per GPU of the pod's
assignment naming that GPU's device with `consumedCapacity` = the pod's guaranteed CUs and memory
(a whole-GPU pod consumes the device's whole capacity), `shareID` = the pod's UID. The allocator counts
it like any allocated claim, so it places claims only where the extender's pods left room.

What v1.36.2 does with such a claim:
- kube-scheduler's allocator counts it; the resource-claim controller leaves it alone (it deallocates
  a claim only when its reservedFor goes from some to none, and this one never had any); both shown
  in tests/kube/test_dra_shadow_real.py.
- A *deallocated* claim requeues pods waiting for DRA capacity (the test's waiting claim is allocated
  within seconds); a claim merely *deleted* did not (seen once by hand: a waiting claim was still
  unallocated 30 s after its blocker's shadow was garbage-collected; kube-scheduler's unschedulable
  pool is flushed only every 5 minutes). So the claim carries a finalizer and is always deallocated
  before it goes; the pod's owner reference lets garbage collection start that delete even when the
  extender missed the pod's end, and the finalizer holds it until the extender deallocates.

Order and crash windows. The Binding stays the one write that records a placement (kube/cluster.py);
the shadow claim is derived from it, written just after it by this reconciler's thread (the bind's
latency is unchanged), and repaired by a full resync every RESYNC seconds: a missing shadow is created,
one left half-written (created, not yet allocated: an extender that died between the two writes) is
completed, one whose pod ended or is gone is deallocated and deleted. Until a pod's shadow is
allocated — the moments between the Binding and the status write, longer if the extender died in
between — kube-scheduler can still allocate a claim on that pod's GPU; the agent then refuses that
claim at Prepare (it counts the extender's pods, agent/dra/prepare.py), so the window costs a waiting
DRA pod, never a double booking.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, ApiException, ResourceV1Api

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, parse_assignment
from extender.core.errors import AssignmentError, TemporaryError
from extender.core.quantity import parse_bytes
from extender.engine.cluster import PodView
from extender.engine.dra_requests import COMPUTE_UNITS, DEVICE_CLASS, MEMORY
from extender.kube.claims import DRIVER, SHADOW_OF
from extender.kube.raw import list_items, release

log = logging.getLogger(__name__)

FINALIZER = "gpuslice.io/shadow-claim"
RESYNC = 10.0  # seconds between full resyncs (the repair path)
SLICES_FRESH = 1.0  # a bind to a node not in the last slice listing lists again if it is older than this
TIMEOUT = (5, 30)


class ShadowSyncError(TemporaryError):
    """Some shadow claims could not be written; the others were, and the next resync retries."""


@dataclass(frozen=True)
class SliceDevice:
    """One GPU as the node's ResourceSlice publishes it: its device name and consumable capacities."""

    name: str
    compute_units: int
    memory_bytes: int


def slice_devices(slices: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, SliceDevice]]:
    """node -> GPU index -> device, from this driver's ResourceSlices (the agent's `index` attribute
    ties a device to the GPU index of the node's inventory, which the assignment names)."""
    out: dict[str, dict[int, SliceDevice]] = {}
    for s in slices:
        spec = s.get("spec") or {}
        if spec.get("driver") != DRIVER or not spec.get("nodeName"):
            continue
        node = out.setdefault(spec["nodeName"], {})
        for d in spec.get("devices") or []:
            index = ((d.get("attributes") or {}).get("index") or {}).get("int")
            cap = d.get("capacity") or {}
            try:
                node[int(index)] = SliceDevice(str(d["name"]), parse_bytes(cap[COMPUTE_UNITS]["value"]),
                                               parse_bytes(cap[MEMORY]["value"]))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ResourceSlice %s: device %s not usable for shadow claims: %s",
                            (s.get("metadata") or {}).get("name"), d.get("name"), exc)
    return out


def shadow_name(pod_uid: str) -> str:
    return f"gpuslice-shadow-{pod_uid}"


def pod_assignment(pod: PodView) -> Assignment | None:
    """The placement a live, bound extender pod holds, or None (unbound, ended, or none)."""
    text = pod.annotations.get(ASSIGNMENT_ANNOTATION)
    if text is None or not pod.node_name or pod.terminal:
        return None
    try:
        a = parse_assignment(text)
    except AssignmentError:
        return None  # the engine logs and refuses such a pod; it holds nothing to show
    return a if a.node == pod.node_name else None


def consumed(a: Assignment, devices: Mapping[int, SliceDevice]) -> list[tuple[int, SliceDevice, int, int]]:
    """(gpu index, device, CUs, memory bytes) a pod's assignment consumes of each published device:
    its guaranteed CUs and memory, capped at the device's capacity (a whole-GPU pod holds every CU,
    the shared burst region included, which the slice does not offer as `computeUnits`)."""
    out = []
    for g in a.gpus:
        d = devices.get(g.index)
        if d is not None:
            out.append((g.index, d, min(len(g.cus), d.compute_units), min(g.memoryBytes, d.memory_bytes)))
    return out


def shadow_claim(pod: PodView, a: Assignment, devices: Mapping[int, SliceDevice]) -> tuple[dict, dict] | None:
    """(the claim to create, its status.allocation) for a pod's assignment, or None when the node
    publishes none of its GPUs."""
    parts = consumed(a, devices)
    if not parts:
        return None
    requests, results = [], []
    for index, d, cus, memory in parts:
        amounts = {COMPUTE_UNITS: str(cus), MEMORY: str(memory)}
        requests.append({"name": f"gpu-{index}", "exactly": {"deviceClassName": DEVICE_CLASS,
                                                              "capacity": {"requests": amounts}}})
        results.append({"request": f"gpu-{index}", "driver": DRIVER, "pool": a.node, "device": d.name,
                        "shareID": pod.uid, "consumedCapacity": amounts})
    claim = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
             "metadata": {"name": shadow_name(pod.uid), "namespace": pod.namespace,
                          "labels": {SHADOW_OF: pod.uid}, "finalizers": [FINALIZER],
                          "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod.name,
                                               "uid": pod.uid}]},
             "spec": {"devices": {"requests": requests}}}
    allocation = {"devices": {"results": results},
                  "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                      {"key": "metadata.name", "operator": "In", "values": [a.node]}]}]}}
    return claim, allocation


def allocation_key(allocation: Mapping[str, Any] | None) -> frozenset[tuple[str, str, int, int]] | None:
    """What an allocation books, comparable whatever quantity spelling the API server returns."""
    if not allocation:
        return None
    out = set()
    for r in (allocation.get("devices") or {}).get("results") or []:
        cap = r.get("consumedCapacity") or {}
        try:
            out.add((str(r.get("pool")), str(r.get("device")), parse_bytes(cap.get(COMPUTE_UNITS, 0)),
                     parse_bytes(cap.get(MEMORY, 0))))
        except ValueError:
            out.add((str(r.get("pool")), str(r.get("device")), -1, -1))
    return frozenset(out)


class ShadowClaims:
    """Keeps one allocated shadow claim per extender pod on a DRA node, and none for anything else.

    `pods` lists the extender's pod views (the watch cache); `leading` gates writes on the extender's
    scheduler holding its lease, so replicas do not fight over the same claims."""

    def __init__(self, api: ApiClient, pods: Callable[[], list[PodView]], synced: Callable[[], bool],
                 leading: Callable[[], bool] | None = None, resync: float = RESYNC) -> None:
        self.resource = ResourceV1Api(api)
        self.pods = pods
        self.synced = synced  # the pod cache is complete: before that a resync would remove live pods' shadows
        self.leading = leading
        self.resync = resync
        self._devices: dict[str, dict[int, SliceDevice]] = {}  # node -> index -> device (last listing)
        self._listed_at = float("-inf")
        self._bound: dict[str, PodView] = {}  # uid -> view, just bound: write its shadow now
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._full = True  # a resync is due (the first one as soon as the pod cache is synced)
        self._stop = threading.Event()
        self.writes = 0
        self.syncs = 0

    # --- triggers --------------------------------------------------------------------------------
    def bound(self, pod: PodView) -> None:
        """A pod was just bound (the view carries its node and assignment): write its shadow soon.
        Nothing to do when a listing of the last SLICES_FRESH seconds has no slice for its node (what the
        thread would find; on a cluster without DRA nodes, every bind): a slice published since is the
        resync's, as it would be had the thread run now."""
        listed_at = self._listed_at  # before the devices: refresh_slices sets them first, so these are as new
        if time.monotonic() - listed_at <= SLICES_FRESH and pod.node_name not in self._devices:
            return
        with self._lock:
            self._bound[pod.uid] = pod
        self._wake.set()

    def freed(self, node: str) -> None:
        """A pod's share was freed on `node`: resync now, so its shadow is deallocated promptly.
        Nothing to do when a listing of the last SLICES_FRESH seconds has no slice for the node: a shadow
        is only written for a pod on a node with a slice. (Shadows left on a node whose slice was
        withdrawn go at the next resync, every `resync` seconds, as `bound` leaves a slice published since
        to it.) Deleting a burst of pods on nodes without DRA so costs one resync per SLICES_FRESH, not
        one per pod."""
        listed_at = self._listed_at  # before the devices, as in `bound`
        if time.monotonic() - listed_at <= SLICES_FRESH and node not in self._devices:
            return
        with self._lock:
            self._full = True
        self._wake.set()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="shadow-claims", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            woke = self._wake.wait(self.resync if self.synced() else 0.2)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self.synced():
                continue
            with self._lock:
                bound, self._bound = self._bound, {}
                full, self._full = self._full or not woke, False
            full_later = False
            try:
                if self.leading is not None and not self.leading():
                    continue  # the leader's replica writes; this one resyncs once it leads
                if any(v.node_name not in self._devices for v in bound.values()) \
                        and time.monotonic() - self._listed_at > SLICES_FRESH:
                    self.refresh_slices()  # a node whose slice this extender has not listed yet
                for view in bound.values():
                    try:
                        self.ensure(view)
                    except ApiException as exc:  # this pod's shadow waits for the resync; the others go on
                        full_later = True
                        log.warning("shadow claim of pod %s: %s %s", view.key, exc.status, exc.reason)
                if full:
                    self.sync()
            except Exception as exc:  # the next resync repairs; never let the loop die
                full_later = True
                log.warning("shadow claims: %s", exc)
            if full_later:
                with self._lock:
                    self._full = True

    # --- reconciling ---------------------------------------------------------------------------
    def refresh_slices(self) -> dict[str, dict[int, SliceDevice]]:
        try:
            items, _ = list_items(self.resource.list_resource_slice, field_selector=f"spec.driver={DRIVER}")
        except ApiException as exc:
            if exc.status != 404:  # 404: no resource.k8s.io/v1 on this API server, so no DRA nodes
                raise
            items = []
        self._devices = slice_devices(items)
        self._listed_at = time.monotonic()
        return self._devices

    def ensure(self, pod: PodView, existing: Mapping[str, Any] | None = None) -> bool:
        """Create or complete one pod's shadow claim; True when it wrote."""
        devices = self._devices.get(pod.node_name or "")  # first: no slice, no shadow, nothing to parse
        a = pod_assignment(pod) if devices else None
        want = shadow_claim(pod, a, devices) if a is not None and devices else None
        if want is None:
            return False
        claim, allocation = want
        if existing is not None and (existing.get("metadata") or {}).get("deletionTimestamp"):
            self.remove(existing)  # on its way out (its pod was replaced?): make room for the new one
            existing = None
        if existing is None:
            try:
                release(self.resource.create_namespaced_resource_claim(
                    pod.namespace, claim, _preload_content=False, _request_timeout=TIMEOUT))
                self.writes += 1
            except ApiException as exc:
                if exc.status != 409:
                    raise
        else:
            have = allocation_key((existing.get("status") or {}).get("allocation"))
            if have == allocation_key(allocation):
                return False
            if have is not None:  # an allocation cannot be changed in place: replace the claim
                self.remove(existing)
                return self.ensure(pod)
        release(self.resource.patch_namespaced_resource_claim_status(
            claim["metadata"]["name"], pod.namespace, {"status": {"allocation": allocation}},
            _content_type="application/merge-patch+json", _preload_content=False, _request_timeout=TIMEOUT))
        self.writes += 1
        log.info("shadow claim %s/%s: pod %s holds %s", pod.namespace, claim["metadata"]["name"], pod.key,
                 ", ".join(f"{r['device']} {r['consumedCapacity'][COMPUTE_UNITS]} CUs"
                           for r in allocation["devices"]["results"]))
        return True

    def remove(self, claim: Mapping[str, Any]) -> None:
        """Deallocate (which requeues pods waiting for DRA capacity), drop the finalizer, delete."""
        meta = claim.get("metadata") or {}
        name, ns = meta["name"], meta["namespace"]
        try:
            if (claim.get("status") or {}).get("allocation"):
                release(self.resource.patch_namespaced_resource_claim_status(
                    name, ns, {"status": {"allocation": None}}, _content_type="application/merge-patch+json",
                    _preload_content=False, _request_timeout=TIMEOUT))
            finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
            if finalizers != list(meta.get("finalizers") or []):
                release(self.resource.patch_namespaced_resource_claim(
                    name, ns, {"metadata": {"finalizers": finalizers or None}},
                    _content_type="application/merge-patch+json", _preload_content=False,
                    _request_timeout=TIMEOUT))
            if not meta.get("deletionTimestamp"):
                release(self.resource.delete_namespaced_resource_claim(name, ns, _preload_content=False,
                                                                       _request_timeout=TIMEOUT))
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.writes += 1
        log.info("shadow claim %s/%s removed (pod %s)", ns, name, (meta.get("labels") or {}).get(SHADOW_OF))

    def sync(self) -> tuple[int, int]:
        """Full reconcile: every live extender pod on a DRA node has its allocated shadow, no other
        shadow exists. Returns (written, removed)."""
        self.refresh_slices()
        try:
            items, _ = list_items(self.resource.list_resource_claim_for_all_namespaces, label_selector=SHADOW_OF)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return 0, 0  # no resource.k8s.io/v1 on this API server: no DRA, nothing to show
        have = {(i.get("metadata") or {}).get("labels", {}).get(SHADOW_OF): i for i in items}
        written = removed = failed = 0
        wanted = set()
        for pod in self.pods():
            if not self._devices.get(pod.node_name or ""):  # before parsing: most pods, on most clusters
                continue
            a = pod_assignment(pod)  # held on pod.node_name, or None
            if a is None:
                continue
            wanted.add(pod.uid)
            try:
                written += self.ensure(pod, have.get(pod.uid))
            except ApiException as exc:  # one refused write (a terminating namespace?) does not stop the rest
                failed += 1
                log.warning("shadow claim of pod %s: %s %s", pod.key, exc.status, exc.reason)
        for uid, claim in have.items():
            if uid not in wanted:
                try:
                    self.remove(claim)
                    removed += 1
                except ApiException as exc:
                    failed += 1
                    log.warning("shadow claim %s: %s %s", (claim.get("metadata") or {}).get("name"), exc.status,
                                exc.reason)
        self.syncs += 1
        if failed:
            raise ShadowSyncError(f"{failed} shadow claim writes failed (retried at the next resync)")
        return written, removed
