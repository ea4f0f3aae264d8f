"""Act only while our kube-scheduler leads.

The extender runs as a sidecar of kube-scheduler and shares its leader election by *reading* the
scheduler's Lease rather than joining it: kube-scheduler's identity is `<hostname>_<uuid>`, and a
sidecar has the same hostname as its scheduler, so "the holder starts with my hostname and the
lease is current" means "my scheduler leads". Filter and prioritize stay available in a standby
(they only read its warm, watch-fed ledger); bind refuses to write while the lease is elsewhere,
so a deposed leader's late binds cannot race the new leader's.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import datetime

from kubernetes.client import ApiClient, CoordinationV1Api

from extender.kube.raw import read_json

log = logging.getLogger(__name__)


class LeaseGate:
    def __init__(self, api: ApiClient, namespace: str, name: str, identity_prefix: str | None = None,
                 refresh: float = 1.0) -> None:
        self.api = CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.prefix = (identity_prefix or socket.gethostname()) + "_"
        self.refresh = refresh
        self._leading = False
        self._checked = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self.refresh:
            return self._leading
        with self._lock:
            if now - self._checked >= self.refresh:
                self._leading = self._read()
                self._checked = time.monotonic()
        return self._leading

    def _read(self) -> bool:
        try:
            resp = self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False,
                                                  _request_timeout=(5, 5))
            spec = read_json(resp).get("spec") or {}
        except Exception as exc:
            log.warning("lease %s/%s unreadable: %s", self.namespace, self.name, exc)
            return False
        holder = spec.get("holderIdentity") or ""
        renew = spec.get("renewTime")
        duration = spec.get("leaseDurationSeconds") or 15
        if not holder.startswith(self.prefix) or not renew:
            return False
        renewed = datetime.fromisoformat(renew.replace("Z", "+00:00")).timestamp()
        return time.time() < renewed + duration
