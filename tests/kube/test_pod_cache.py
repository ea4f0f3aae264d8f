"""The watch's pod cache finds a pod by namespace and name (bind's lookup), across puts, drops and
relists, with pods of one name in several namespaces."""

from __future__ import annotations

from extender.engine.cluster import PodView
from extender.kube.cluster import KubeCluster


class NoApi:
    def read_namespaced_pod(self, name: str, namespace: str, **_: object) -> object:
        raise AssertionError(f"the cache should answer for {namespace}/{name}")


def test_pods_by_namespace_and_name() -> None:
    cache = KubeCluster(NoApi())  # type: ignore[arg-type]
    a, b = PodView("u-a", "ns1", "p"), PodView("u-b", "ns2", "p")
    cache.put_pod(a)
    cache.put_pod(b)
    assert cache.get_pod("ns1", "p") is a and cache.get_pod("ns2", "p") is b
    again = PodView("u-a2", "ns1", "p")  # recreated under the same name
    cache.put_pod(again)
    cache.drop_pod(a)  # the old pod's late delete leaves the new one findable
    assert cache.get_pod("ns1", "p") is again
    cache.drop_pod(again)
    cache.drop_pod(b)
    assert cache._uids == {}  # no namespace left behind once its pods are gone
    cache.replace_pods([a, b])
    assert cache.get_pod("ns1", "p") is a and cache.get_pod("ns2", "p") is b
