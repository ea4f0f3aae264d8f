"""DRA tenants for the extender's ledger: ResourceClaims of driver `gpu.gpuslice.io` seen as tenants.

The node agent writes each prepared share's exact CU sets to the claim's `status.devices[].data`
(see agent/dra/kube.py). A claim holding such devices becomes a tenant view — a PodView named
`claim:<name>`, bound to the pool's node, carrying the equivalent `gpuslice.io/assignment` — so the
engine's one ledger rebuild and event path count DRA shares next to extender pods, and neither path
hands out CUs or memory the other holds. A claim that kube-scheduler allocated but no agent has
prepared yet holds no CU set, so it is not counted until it is prepared (the agent, for its part,
prepares only around the extender pods on its node).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client import ApiClient, ApiException, ResourceV1Api
from kubernetes.watch.watch import iter_resp_lines

from extender.core.assignment import ASSIGNMENT_ANNOTATION, parse_assignment
from extender.core.errors import AssignmentError
from extender.engine.cluster import PodView
from extender.engine.dra_requests import DRIVER
from extender.engine.scheduler import Engine
from extender.kube.cluster import KubeCluster
from extender.kube.raw import list_items

log = logging.getLogger(__name__)

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


def list_claim_views(api: ApiClient) -> tuple[list[PodView], str]:
    """Every claim holding prepared shares of this driver, and the list's resourceVersion. An API server
    without resource.k8s.io/v1 has no DRA tenants: ([], "")."""
    items, rv = list_claims(api)
    return [v for v in map(claim_view, items) if holds_slices(v)], rv


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

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="watch-resourceclaims", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def relist(self) -> str:
        items, rv = list_claims(self.api)
        views = [v for v in map(claim_view, items) if holds_slices(v)]
        if rv:  # DRA pods' requests for filter and prioritize (engine/dra_requests.py)
            self.engine.claims.replace(items)
        with self.feed:
            gone = self.cluster.replace_claims(views)
            for uid in gone:
                self.engine.forget_pod(uid)
            for view in views:
                self.engine.observe_pod(view)
        return rv

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
                    self.apply(event.get("type", ""), claim_view(obj))
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
        finally:
            resp.close()
            resp.release_conn()
        return rv

    def apply(self, etype: str, view: PodView) -> None:
        """One claim event: counted while it holds prepared shares, forgotten once it does not."""
        with self.feed:
            held = self.engine.ledger.entry(view.uid)
            if etype == "DELETED" or not holds_slices(view):
                self.cluster.drop_claim(view.uid)
                self.engine.forget_pod(view.uid)
            else:
                self.cluster.put_claim(view)
                self.engine.observe_pod(view)
            self.events += 1
        if held is not None and self.engine.ledger.entry(view.uid) is None and self.on_freed is not None:
            self.on_freed(held.assignment.node)
