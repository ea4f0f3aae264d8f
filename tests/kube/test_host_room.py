"""Host room (engine.cluster.HostRoom) from the views kept as they change, in the memory cluster and in the
watch's cache: after any sequence of node and pod changes, host_free equals allocatable less the requests
of the live pods bound to each node, worked out from every stored view."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.quantity import parse_bytes, parse_millis
from extender.engine.cluster import REMEMBER_ASKED, ClusterStore, MemoryCluster, NodeView, PodView
from extender.kube.cluster import KubeCluster
from tests.kube.fake_api import FakeApi

NODES = ("n0", "n1", "n2")
ASKED = [*NODES, "unknown"]  # a name no view has: no room, less what pods bound there ask
UNLIMITED = 2**62
# As long as filter's lists (REMEMBER_ASKED or more: remembered, then brought up to date name by name), with
# names repeated; asked about between steps, with a second list now and then (the remembered one is replaced).
LONG = ASKED * (REMEMBER_ASKED // len(ASKED) + 1)
OTHER = LONG[::-1]


def scanned(store: ClusterStore, names: list[str]) -> tuple[list[int], list[int]]:
    """The rule, the long way: one pass over every stored view."""
    cpu, mem = {n: 0 for n in names}, {n: 0 for n in names}
    for node in store.list_nodes():
        if node.name in cpu:
            cpu[node.name] = _amount(node.allocatable.get("cpu"), parse_millis)
            mem[node.name] = _amount(node.allocatable.get("memory"), parse_bytes)
    for pod in store._pods.values():
        if pod.node_name in cpu and not pod.terminal:
            cpu[pod.node_name] -= pod.cpu_millis
            mem[pod.node_name] -= pod.memory_bytes
    return [cpu[n] for n in names], [mem[n] for n in names]


def _amount(text: str | None, parse: object) -> int:
    if text is None:
        return UNLIMITED
    try:
        return parse(text)  # type: ignore[operator]
    except ValueError:
        return UNLIMITED


nodes = st.builds(lambda name, cpu, mem: NodeView(name, allocatable={k: v for k, v in (("cpu", cpu), ("memory", mem))
                                                                     if v is not None}),
                  st.sampled_from(NODES), st.sampled_from([None, "8", "500m", "bad"]),
                  st.sampled_from([None, "16Gi", "1000", "-"]))
pods = st.builds(lambda uid, node, phase, cpu, mem: PodView(uid, "default", uid, node_name=node, phase=phase,
                                                            cpu_millis=cpu, memory_bytes=mem),
                 st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([None, *ASKED]),
                 st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
                 st.sampled_from([0, 250, 1000]), st.sampled_from([0, 2**30, 3]))
ops = st.lists(st.one_of(st.tuples(st.just("node"), nodes), st.tuples(st.just("drop-node"), st.sampled_from(NODES)),
                         st.tuples(st.just("pod"), pods), st.tuples(st.just("drop-pod"), pods),
                         st.tuples(st.just("bind"), pods, st.sampled_from(NODES)),
                         st.tuples(st.just("relist-pods"), st.lists(pods, max_size=4)),
                         st.tuples(st.just("relist-nodes"), st.lists(nodes, max_size=3))), max_size=25)


def _same(store: ClusterStore, op: str = "") -> None:
    for names in (ASKED, LONG, *([OTHER] if op.startswith("relist") else [])):
        cpu, mem = store.host_free(names)
        assert (cpu.tolist(), mem.tolist()) == scanned(store, names)
        assert cpu.dtype == mem.dtype == np.int64
    cpu[:] = -1  # the caller's copy: what is remembered does not change with it
    assert store.host_free(OTHER if op.startswith("relist") else LONG)[0].tolist() == \
        scanned(store, OTHER if op.startswith("relist") else LONG)[0]


@settings(max_examples=150, deadline=None)
@given(ops)
def test_memory_cluster_host_room_matches_its_views(steps: list[tuple]) -> None:
    cluster = MemoryCluster()
    for op, *args in steps:
        if op == "node":
            cluster.add_node(args[0])
        elif op == "drop-node":
            cluster.remove_node(args[0])
        elif op == "pod":
            cluster.add_pod(args[0])
        elif op == "drop-pod":
            cluster.remove_pod(args[0].uid)
        elif op == "bind":
            try:
                cluster.bind_pod(args[0], args[1], {"k": "v"})
            except Exception:  # noqa: BLE001 - a refused bind changes nothing
                pass
        elif op == "relist-pods":
            for pod in args[0]:
                cluster.add_pod(pod)
        else:
            for node in args[0]:
                cluster.add_node(node)
        _same(cluster, op)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_watch_cache_host_room_matches_its_views(steps: list[tuple]) -> None:
    cluster = KubeCluster(FakeApi())  # type: ignore[arg-type]
    for op, *args in steps:
        if op == "node":
            cluster.put_node(args[0])
        elif op == "drop-node":
            cluster.drop_node(args[0])
        elif op == "pod":
            cluster.put_pod(args[0])
        elif op == "drop-pod":
            cluster.drop_pod(args[0])
        elif op == "bind":  # the watch shows the pod bound (a MODIFIED event)
            cluster.put_pod(replace(args[0], node_name=args[1], phase="Running"))
        elif op == "relist-pods":
            cluster.replace_pods(args[0])
        else:
            cluster.replace_nodes(args[0])
        _same(cluster, op)
