"""A relist after 410 Gone racing a bind (issue 12): the Binding lands after the pod listing was taken,
so the listing shows the pod unbound; the rebuilt ledger must still hold its slice."""

from __future__ import annotations

from extender.kube.views import pod_view
from extender.kube.watch import ClusterWatch
from tests.kube.fake_api import FakeApi
from tests.kube.test_bind_faults import filtered, inventory


def test_bind_committed_between_listing_and_rebuild_survives_the_relist() -> None:
    api = FakeApi()
    api.add_node("n0", inventory("n0", gpus=1))
    engine, cluster, view = filtered(api, {"gpuslice.io/compute": "1000m", "gpuslice.io/memory": "16Gi"})
    watch = ClusterWatch(api, cluster, engine)  # type: ignore[arg-type]
    since = engine.listing_started()
    watch._relist_nodes()
    watch._relist_pods()  # the listing: p is not bound yet
    assert engine.bind("default", "p", view.uid, "n0") == ""  # the Binding lands now
    engine.sync(since)
    entry = engine.ledger.entry(view.uid)
    assert entry is not None and not entry.reserved
    # The GPU is p's: a second whole-GPU pod does not get it.
    api.add_pod("default", "q", {"gpuslice.io/compute": "1000m", "gpuslice.io/memory": "16Gi"})
    q = pod_view(api.pods[("default", "q")])
    assert engine.filter(q, names=["n0"]).passed == []
