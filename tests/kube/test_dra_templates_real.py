"""The deploy/dra ResourceClaimTemplates end to end on a real control plane with kube-controller-manager's
resource-claim controller: pods name a template, the controller makes each pod its claim, kube-scheduler
allocates it, the agent's plugin (through a test kubelet) prepares it; when a pod goes, the controller
deallocates its claim and a waiting pod gets the share. Skipped without the binaries."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from extender.agent.dra.publisher import SlicePublisher
from extender.agent.topology import Topology, read_topology
from extender.core.atoms import is_xcc_complete
from extender.core.policy import Policy
from extender.kube.controlplane import assets_dir
from tests.agent.dra_kubelet import ClaimRef
from tests.kube.conftest import ROOT, start_control_plane
from tests.kube.test_dra_real import (
    FIXTURE,
    NODE,
    NS,
    Cluster,
    node_body,
    prepared_sets,
    scheduler_config,
    wait_for,
)

TEMPLATE = "gpu-slice-64cu-60gi"


def pod_body(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": TEMPLATE}],
                     "containers": [{"name": "main", "image": "registry.invalid/pause:1",
                                     "resources": {"claims": [{"name": "gpu"}]}}]}}


def claim_of(c: Cluster, pod: str) -> str | None:
    statuses = c.pod(pod).get("status", {}).get("resourceClaimStatuses") or []
    return statuses[0].get("resourceClaimName") if statuses else None


def scheduled(c: Cluster, pod: str) -> bool:
    name = claim_of(c, pod)
    return bool(name and c.pod(pod)["spec"].get("nodeName") and c.claim(name).get("status", {}).get("allocation"))


def prepare(c: Cluster, pod: str) -> ClaimRef:
    name = claim_of(c, pod)
    assert name is not None
    ref = ClaimRef(NS, c.claim(name)["metadata"]["uid"], name)
    entry = c.kubelet.prepare(ref).claims[ref.uid]
    assert entry.error == "", entry.error
    return ref


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    assets = assets_dir()
    if assets is None or not (assets / "kube-controller-manager").is_file():
        pytest.skip("kube-controller-manager not in $KUBEBUILDER_ASSETS: templates need its resource-claim controller")
    cp = start_control_plane()
    base = Path(tempfile.mkdtemp(prefix="drt", dir="/tmp"))  # unix socket paths must stay short
    try:
        cp.start_scheduler(scheduler_config(cp.kubeconfig))
        cp.start_controller_manager("resourceclaim-controller")
        c = Cluster(cp, base, Topology(read_topology(FIXTURE).gpus[:2]))
        c.core.create_namespace({"metadata": {"name": NS}})
        c.core.create_node(node_body(NODE))
        c.resource.create_device_class(yaml.safe_load((ROOT / "deploy" / "dra" / "deviceclass.yaml").read_text()))
        for t in yaml.safe_load_all((ROOT / "deploy" / "dra" / "claim-templates.yaml").read_text()):
            if t:
                c.post("resourceclaimtemplates", t)  # as kubectl sends them (compact JSON)
        SlicePublisher(c.dra, NODE, FIXTURE).publish(c.topology, Policy().burst.sharedFraction)
        yield c
        c.close()
    finally:
        cp.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_template_pods_share_gpus_and_a_finished_pod_frees_its_share(cluster: Cluster) -> None:
    pods = [f"t{i}" for i in range(6)]  # 60Gi each: three per 192Gi GPU
    for p in pods:
        cluster.core.create_namespaced_pod(NS, pod_body(p))
    wait_for("six template pods scheduled", lambda: all(scheduled(cluster, p) for p in pods), timeout=90)
    refs = {p: prepare(cluster, p) for p in pods}
    for claim in (cluster.claim(r.name) for r in refs.values()):
        owner = claim["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "Pod" and owner["name"] in pods  # made by the controller from the template
    sets = prepared_sets(cluster)
    assert sorted(len(v) for v in sets.values()) == [3, 3]
    for cu_sets in sets.values():
        assert all(len(s) == 64 and is_xcc_complete(s, 8) for s in cu_sets)
        assert len(frozenset().union(*cu_sets)) == 3 * 64

    cluster.core.create_namespaced_pod(NS, pod_body("t-waiting"))
    wait_for("the seventh unschedulable", lambda: cluster.unschedulable("t-waiting"), timeout=60)
    assert cluster.kubelet.unprepare(refs["t1"]).claims[refs["t1"].uid].error == ""
    cluster.core.delete_namespaced_pod("t1", NS, grace_period_seconds=0)
    # The controller deallocates the claim of a pod that is gone (deleting it is the garbage collector's job).
    wait_for("t1's claim deallocated by the controller",
             lambda: not cluster.claim(refs["t1"].name).get("status", {}).get("allocation"), timeout=60)
    wait_for("the waiting pod scheduled", lambda: scheduled(cluster, "t-waiting"), timeout=90)
    prepare(cluster, "t-waiting")
    for cu_sets in prepared_sets(cluster).values():
        assert len(cu_sets) == 3 and len(frozenset().union(*cu_sets)) == 3 * 64
