"""The DRA side's thin adapter to the Kubernetes API (resource.k8s.io/v1 through the kubernetes
client): the node's ResourceSlice, ResourceClaims to prepare, and the prepared CU sets written to the
claim's `status.devices[].data` (the field DRA gives drivers for per-device results), where the
extender, `top` and `explain` read them. Objects travel as plain JSON dicts."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from extender.agent.dra.prepare import PreparedClaim
from extender.agent.dra.slices import DRIVER
from extender.core.rangelist import format_ranges

TIMEOUT = (5, 30)


def read_json(resp: Any) -> dict[str, Any]:
    """The body of a `_preload_content=False` response, the connection handed back to the pool."""
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


def release(resp: Any) -> None:
    resp.data  # noqa: B018 - read to the end so the connection can be reused
    resp.release_conn()


def prepared_status(claim: PreparedClaim) -> list[dict[str, Any]]:
    """This driver's `status.devices` entries for a prepared claim: one per share, its CU sets as data."""
    out = []
    for d in claim.devices:
        g = claim.gpu(d.gpu_index)
        entry: dict[str, Any] = {"driver": DRIVER, "pool": d.pool, "device": d.device,
                                 "data": {"gpu": g.index, "id": g.id, "cus": format_ranges(g.cus),
                                          "burstCus": format_ranges(g.burstCus), "memoryBytes": g.memoryBytes,
                                          "memoryLimitBytes": g.memoryLimitBytes,
                                          "class": claim.assignment.workload_class}}
        if d.share_id:
            entry["shareID"] = d.share_id
        out.append(entry)
    return out


class DraKube:
    """SliceStore, ClaimSource and ClaimStatusWriter over one ApiClient."""

    def __init__(self, api: client.ApiClient) -> None:
        self.resource = client.ResourceV1Api(api)

    def get_slice(self, name: str) -> dict[str, Any] | None:
        try:
            return read_json(self.resource.read_resource_slice(name, _preload_content=False,
                                                               _request_timeout=TIMEOUT))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_slice(self, body: dict[str, Any]) -> None:
        release(self.resource.create_resource_slice(body, _preload_content=False, _request_timeout=TIMEOUT))

    def replace_slice(self, name: str, body: dict[str, Any]) -> None:
        release(self.resource.replace_resource_slice(name, body, _preload_content=False, _request_timeout=TIMEOUT))

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return read_json(self.resource.read_namespaced_resource_claim(name, namespace, _preload_content=False,
                                                                      _request_timeout=TIMEOUT))

    def publish_prepared(self, claim: PreparedClaim) -> None:
        """Replace this driver's entries of the claim's status.devices (others' entries are kept); the
        resourceVersion makes a concurrent writer's change a conflict, retried once.

        Known limit, seen on the 1.36 API server (tests/kube/test_dra_real.py): when a claim with opaque
        parameters was created as non-compact JSON (Python's json.dumps; kubectl and Go clients send
        compact JSON), every status write of it is refused with "status.allocation: field is
        immutable" (422), merge or JSON patch alike; the share stays prepared but unpublished (logged)."""
        for attempt in range(2):
            current = self.get_claim(claim.namespace, claim.name)
            status = current.get("status") or {}
            others = [d for d in status.get("devices") or [] if d.get("driver") != DRIVER]
            body = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                    "status": {"devices": others + prepared_status(claim)}}
            try:
                release(self.resource.patch_namespaced_resource_claim_status(
                    claim.name, claim.namespace, body, _content_type="application/merge-patch+json",
                    _preload_content=False, _request_timeout=TIMEOUT))
                return
            except ApiException as exc:
                if exc.status != 409 or attempt:
                    raise


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from `kubeconfig`, else the pod's service account."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)
