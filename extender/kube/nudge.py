"""Tell kube-scheduler that GPU capacity came free, so pods the extender rejected are retried now.

kube-scheduler (1.30+) marks a pod that an extender rejected with the pseudo-plugin "Extender",
which any Node or Pod event requeues (pkg/scheduler/schedule_one.go, framework/runtime: the
extender's default enqueue extension registers every Node and Pod action, UpdateNodeAnnotation
included). A deleted pod is such an event already, but kube-scheduler may see it before this
extender's watch has freed the slice, retry at once, be rejected again and then sit in the
unschedulable pool for up to five minutes. So once the ledger has freed capacity on a node, the
extender touches an annotation on that Node: an event that arrives after the ledger changed.
One Node update requeues every pod the extender rejected, wherever its capacity came free (the
Extender pseudo-plugin queues on any Node event), so pokes are coalesced into at most one patch per
interval, on the node that freed last; and made only while
some pod that asks for a slice is unbound (`wanted`): with nobody waiting there is nothing to
retry, and a Node update makes kube-scheduler and every watcher of Nodes do work. A pod rejected
later sees the freed capacity anyway, because the ledger changed before the poke.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kubernetes.client import CoreV1Api

from extender.kube.raw import release

log = logging.getLogger(__name__)

FREED_ANNOTATION = "gpuslice.io/capacity-freed"


class Nudger:
    def __init__(self, api: CoreV1Api, interval: float = 0.25, wanted: Callable[[], bool] | None = None) -> None:
        self.api = api
        self.interval = interval
        self.wanted = wanted
        self._pending: dict[str, None] = {}  # nodes poked since the last touch, the latest last
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = 0
        self.sent = 0
        self.failed = 0
        self.skipped = 0  # pokes dropped because no pod was waiting

    def poke(self, node: str) -> None:
        with self._lock:
            self._pending.pop(node, None)
            self._pending[node] = None
        self._wake.set()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="nudger", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                nodes, self._pending = self._pending, {}
            if nodes and self.wanted is not None and not self.wanted():
                self.skipped += len(nodes)
                continue
            # the node that freed last, else (deleted meanwhile) the one before
            for node in list(reversed(nodes))[:3]:
                if self._touch(node):
                    break
            self._stop.wait(self.interval)

    def _touch(self, node: str) -> bool:
        self._seq += 1
        stamp = f"{time.time():.3f}/{self._seq}"
        try:
            release(self.api.patch_node(node, {"metadata": {"annotations": {FREED_ANNOTATION: stamp}}},
                                        _preload_content=False, _request_timeout=(5, 10)))
            self.sent += 1
            return True
        except Exception as exc:  # a missed nudge only delays a retry; never fail the watch for it
            self.failed += 1
            log.warning("node %s: could not signal freed capacity: %s", node, exc)
            return False
