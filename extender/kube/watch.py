"""List-then-watch of Nodes and Pods, feeding the engine's ledgers.

Start-up lists both kinds in full, rebuilds every ledger from that listing (`Engine.sync`, after
which `/readyz` turns true), then watches each kind from the listing's resourceVersion. A watch that
ends is resumed from the last resourceVersion seen (bookmarks keep it fresh); 410 Gone means the
history is compacted away, so that kind is listed again and the ledgers are rebuilt; any other
error backs off exponentially and retries. Events are applied one at a time under one lock, so a
rebuild never interleaves with an event.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kubernetes.client import ApiException, CoreV1Api
from kubernetes.watch.watch import iter_resp_lines

from extender.engine.cluster import NodeView, PodView
from extender.engine.scheduler import Engine
from extender.kube.cluster import KubeCluster
from extender.kube.raw import list_items
from extender.kube.views import node_view, pod_view

log = logging.getLogger(__name__)

WATCH_SECONDS = 240
READ_TIMEOUT = 90.0  # bookmarks arrive about every minute; a silent stream is resumed, not trusted
BACKOFF_MIN = 0.2
BACKOFF_MAX = 10.0


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class ClusterWatch:
    def __init__(self, api: CoreV1Api, cluster: KubeCluster, engine: Engine,
                 on_freed: Callable[[str], None] | None = None, scheduler_name: str | None = None) -> None:
        self.api = api
        # Only pods of this schedulerName can hold slices (only its binds reach this extender), so in
        # a large cluster the pod watch can skip every other pod's events.
        self.pod_filter = {"field_selector": f"spec.schedulerName={scheduler_name}"} if scheduler_name else {}
        self.cluster = cluster
        self.engine = engine
        self.on_freed = on_freed  # node name -> None: capacity came free there
        self._feed = threading.RLock()
        self._stop = threading.Event()
        self._responses: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self.relists = 0
        self.errors = 0
        self.events = 0

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="kube-watch", daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def stop(self) -> None:
        self._stop.set()
        for resp in list(self._responses.values()):
            try:
                resp.close()
            except Exception:  # closing a stream mid-read may raise in the reader; nothing to do
                log.debug("closing watch stream", exc_info=True)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.engine.synced:
                return True
            time.sleep(0.05)
        return self.engine.synced

    def _run(self) -> None:
        delay = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                since = self.engine.listing_started()
                node_rv = self._relist_nodes()
                pod_rv = self._relist_pods()
                with self._feed:
                    self.engine.sync(since)
                gc.freeze()  # the rebuilt ledgers live long: keep them out of full GC scans
                break
            except Exception as exc:
                delay = self._back_off(delay, "initial list failed (%s); retrying in %.1fs", exc, delay)
        else:
            return
        log.info("ledgers synced: %d nodes, %d pods", len(self.cluster.list_nodes()), len(self.cluster.list_pods()))
        for kind, rv in (("nodes", node_rv), ("pods", pod_rv)):
            t = threading.Thread(target=self._watch_loop, args=(kind, rv), name=f"watch-{kind}", daemon=True)
            t.start()
            self._threads.append(t)

    # --- listing -------------------------------------------------------------------------------
    def _relist_nodes(self) -> str:
        items, rv = list_items(self.api.list_node)
        self.cluster.replace_nodes([node_view(i) for i in items])
        return rv

    def _relist_pods(self) -> str:
        items, rv = list_items(self.api.list_pod_for_all_namespaces, **self.pod_filter)
        self.cluster.replace_pods([pod_view(i) for i in items])
        return rv

    # --- watching ------------------------------------------------------------------------------
    def _watch_loop(self, kind: str, rv: str) -> None:
        delay = BACKOFF_MIN
        fn = self.api.list_node if kind == "nodes" else self.api.list_pod_for_all_namespaces
        while not self._stop.is_set():
            try:
                rv = self._stream(kind, fn, rv)
                delay = BACKOFF_MIN
            except Gone:
                log.info("watch %s: resourceVersion %s is gone; listing again", kind, rv)
                try:
                    with self._feed:
                        # Binds committed from here on may be missing from the listing: sync carries them.
                        since = self.engine.listing_started()
                        rv = self._relist_nodes() if kind == "nodes" else self._relist_pods()
                        self.engine.sync(since)
                    self.relists += 1
                    delay = BACKOFF_MIN
                except Exception as exc:
                    delay = self._back_off(delay, "relist %s failed (%s); retrying in %.1fs", kind, exc, delay)
            except Exception as exc:
                if self._stop.is_set():
                    return
                delay = self._back_off(delay, "watch %s failed (%s); resuming from %s in %.1fs", kind, exc, rv, delay)

    def _back_off(self, delay: float, message: str, *args: object) -> float:
        """Count and log a failure, wait `delay` (cut short by stop), and return the next, doubled delay."""
        self.errors += 1
        log.warning(message, *args)
        self._stop.wait(delay)
        return min(delay * 2, BACKOFF_MAX)

    def _stream(self, kind: str, fn: Callable[..., Any], rv: str) -> str:
        """Apply events from `rv` until the server ends the watch; returns the last resourceVersion."""
        try:
            resp = fn(watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                      _preload_content=False, _request_timeout=(5, READ_TIMEOUT),
                      **(self.pod_filter if kind == "pods" else {}))
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
        self._responses[kind] = resp
        try:
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                if not line or line.isspace():
                    continue
                event = orjson.loads(line)  # every pod event of a burst: parsed in C
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if etype != "BOOKMARK":
                    with self._feed:
                        if kind == "nodes":
                            self._node_event(etype, node_view(obj))
                        else:
                            self._pod_event(etype, pod_view(obj))
                    self.events += 1
                if new_rv:
                    rv = new_rv
        finally:
            self._responses.pop(kind, None)
            resp.close()
            resp.release_conn()
        return rv

    def _node_event(self, etype: str, view: NodeView) -> None:
        if etype == "DELETED":
            self.cluster.drop_node(view.name)
            self.engine.forget_node(view.name)
            return
        old = self.cluster.put_node(view)
        before = self.engine.ledger.node(view.name)
        self.engine.observe_node(view)
        after = self.engine.ledger.node(view.name)
        if after is not None and (old is None or after is not before):
            self._freed(view.name)  # a new node, or new inventory (a GPU back in service)

    def _pod_event(self, etype: str, view: PodView) -> None:
        held = self.engine.ledger.entry(view.uid)
        if etype == "DELETED":
            self.cluster.drop_pod(view)
            self.engine.forget_pod(view.uid)
        else:
            self.cluster.put_pod(view)
            self.engine.observe_pod(view)
        if held is not None and self.engine.ledger.entry(view.uid) is None:
            self._freed(held.assignment.node)

    def _freed(self, node: str) -> None:
        if self.on_freed is not None:
            self.on_freed(node)
