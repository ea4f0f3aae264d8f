"""The exact hand-off against a test kubelet over real gRPC (Allocate, PreStartContainer, PodResources):
whatever order kubelet admits and starts pods in, each container gets its own pod's slice."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubelet_fake import CreateContainerError, FakeKubelet, resolve_cdi

from extender.agent.allocation import allocation_for
from extender.agent.deviceplugin import DeviceList, DevicePlugin, share_devices
from extender.agent.handoff import EVENT_REASON, HandOff
from extender.agent.metrics import AgentMetrics
from extender.agent.podresources import PodResourcesClient
from extender.agent.pods import MemoryActions, MemoryPodSource, PodInfo
from extender.agent.topology import read_topology
from extender.core.assignment import Assignment, GpuAssignment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
TOPOLOGY = read_topology(FIXTURES / "mi300x-spx")
SHARES = share_devices(TOPOLOGY, 4)
GIB = 1 << 30
SAME_SECOND = "2026-11-28T19:00:00Z"


@dataclass
class Rig:
    kubelet: FakeKubelet
    plugin: DevicePlugin
    handoff: HandOff
    pods: MemoryPodSource
    actions: MemoryActions
    metrics: AgentMetrics
    cdi: Path

    def count(self, result: str) -> float:
        return self.metrics.registry.get_sample_value("gpuslice_agent_handoffs_total", {"result": result}) or 0


@contextmanager
def rig() -> Iterator[Rig]:
    short = Path(tempfile.mkdtemp(prefix="ho", dir="/tmp"))  # unix socket paths must stay short
    numa = {d.id: d.numa for d in SHARES if d.numa is not None}
    kubelet = FakeKubelet(short, cdi_dir=short / "cdi", numa=numa)
    kubelet.start()
    pods, actions, metrics = MemoryPodSource(), MemoryActions(), AgentMetrics()
    handoff = HandOff("n1", pods, PodResourcesClient(str(kubelet.pod_resources_socket)), lambda: TOPOLOGY,
                      short / "cdi", actions, metrics)
    devices = DeviceList()
    devices.set(SHARES)
    plugin = DevicePlugin(short, devices, handoff, metrics=metrics)
    plugin.check()
    try:
        yield Rig(kubelet, plugin, handoff, pods, actions, metrics, short / "cdi")
    finally:
        plugin.stop()
        kubelet.stop()
        shutil.rmtree(short, ignore_errors=True)


def slice_of(n: int, node: str = "n1", cus: range | None = None) -> str:
    """Pod n's slice: its own GPU pair, CUs and memory, so any swap shows."""
    gpus = (n % 8, (n + 3) % 8)
    atoms = cus if cus is not None else range(8 * (n % 4), 8 * (n % 4) + 8 * (1 + n % 3))
    return Assignment(node=node, gpus=tuple(
        GpuAssignment(index=g, id=TOPOLOGY.gpus[g].info.id, cus=frozenset(atoms), burstCus=frozenset(),
                      memoryBytes=(n + 1) * GIB, memoryLimitBytes=(n + 2) * GIB) for g in gpus),
        workload_class="memory-bound", policy="p", assignedAt=SAME_SECOND).to_json()


def add_pod(r: Rig, n: int, shares: dict[str, int], created: str = SAME_SECOND, **kw) -> PodInfo:
    ann = kw.pop("annotations", {"gpuslice.io/assignment": slice_of(n)})
    pod = PodInfo(f"uid-{n}", "ns", f"p{n}", kw.pop("node", "n1"), created=created, annotations=ann,
                  share_requests=shares, **kw)
    r.pods.pods[pod.uid] = pod
    return pod


def expected(n: int) -> tuple[dict[str, str], list[str]]:
    from extender.core.assignment import parse_assignment

    a = allocation_for(parse_assignment(slice_of(n)), TOPOLOGY)
    return dict(a.envs), list(a.devices)


def assert_own(r: Rig, n: int, container: str = "main") -> None:
    got = r.kubelet.start_container("ns", f"p{n}", container)
    assert (got.env, got.devices) == expected(n), f"pod p{n} got another slice"


def ids(*k: int) -> list[str]:
    return [SHARES[i].id for i in k]


def test_pods_admitted_out_of_creation_order() -> None:
    """Created p0 first ... p5 last; kubelet admits and starts them newest first. The old rule
    (oldest pending pod of the right shape) gave each the slice of another."""
    with rig() as r:
        for n in range(6):
            add_pod(r, n, {"main": 1}, created=f"2026-11-28T19:00:0{n}Z")
        for n in reversed(range(6)):
            r.kubelet.admit("ns", f"p{n}", {"main": ids(n * 4)})
            assert_own(r, n)
        assert r.count("ok") == 6


def test_pods_created_in_the_same_second_with_different_slices() -> None:
    with rig() as r:
        order = [3, 0, 5, 1, 4, 2]
        for n in order:
            add_pod(r, n, {"main": 1 + n % 2})
        for k, n in enumerate(order):
            r.kubelet.admit("ns", f"p{n}", {"main": ids(*range(k * 2, k * 2 + 1 + n % 2))})
        for n in reversed(order):
            assert_own(r, n)


def test_interleaved_allocate_and_prestart_and_reused_ids() -> None:
    with rig() as r:
        for n in (0, 1, 2):
            add_pod(r, n, {"main": 2})
        r.kubelet.admit("ns", "p0", {"main": ids(0, 9)})
        r.kubelet.admit("ns", "p1", {"main": ids(4, 20)})
        assert_own(r, 1)
        assert_own(r, 0)
        assert len(list(r.cdi.iterdir())) == 2
        # p0 terminates; kubelet frees its ids and hands the very same ones to p2
        r.kubelet.remove_pod("ns", "p0")
        r.kubelet.admit("ns", "p2", {"main": ids(9, 0)})
        assert len(list(r.cdi.iterdir())) == 1  # p0's edits are gone before p2 can start
        with pytest.raises(CreateContainerError):  # a runtime creating p2 now finds nothing, not p0's slice
            resolve_cdi(r.cdi, r.kubelet.pod_devices[("ns", "p2")]["main"][1].cdi_devices[0].name)
        assert_own(r, 2)
        assert_own(r, 1)  # a restart of p1's container: PreStart again, same slice


def test_lagging_pod_cache_refuses_then_starts_with_its_own_slice() -> None:
    """kubelet admits a pod the API server (the agent's source) does not show yet, then shows it
    without its assignment: both starts fail loudly; kubelet's retry after the pod is complete works."""
    with rig() as r:
        add_pod(r, 1, {"main": 1})
        r.kubelet.pod_devices.clear()
        r.kubelet.admit("ns", "p7", {"main": ids(5)})
        with pytest.raises(grpc.RpcError) as err:
            r.kubelet.start_container("ns", "p7", "main")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "does not show it" in err.value.details()
        assert r.count("no-pod") == 1 and list(r.cdi.glob("*.json")) == []
        add_pod(r, 7, {"main": 1}, annotations={})
        with pytest.raises(grpc.RpcError, match="no gpuslice.io/assignment"):
            r.kubelet.start_container("ns", "p7", "main")
        assert [e[:2] for e in r.actions.events] == [("ns/p7", EVENT_REASON)] * 2
        add_pod(r, 7, {"main": 1})
        assert_own(r, 7)
        assert (r.count("no-pod"), r.count("no-assignment"), r.count("ok")) == (1, 1, 1)


def test_unsafe_mask_is_refused_with_event_and_metric() -> None:
    with rig() as r:
        add_pod(r, 2, {"main": 1}, annotations={"gpuslice.io/assignment": slice_of(2, cus=range(32, 36))})
        r.kubelet.admit("ns", "p2", {"main": ids(3)})
        with pytest.raises(grpc.RpcError, match="would run unmasked"):
            r.kubelet.start_container("ns", "p2", "main")
        assert r.count("unsafe-mask") == 1 and list(r.cdi.glob("*.json")) == []
        ((pod, reason, message, kind),) = r.actions.events
        assert (pod, reason, kind) == ("ns/p2", EVENT_REASON, "Warning") and "XCDs [4, 5, 6, 7]" in message


def test_api_server_kubelet_or_cdi_dir_failing_refuses_the_start() -> None:
    class Down(MemoryPodSource):
        def get_pod(self, namespace: str, name: str) -> PodInfo | None:
            raise ConnectionError("API server unreachable")

    with rig() as r:
        add_pod(r, 1, {"main": 1})
        r.kubelet.admit("ns", "p1", {"main": ids(1)})
        r.handoff.pods = Down()
        with pytest.raises(grpc.RpcError, match="unreachable"):
            r.kubelet.start_container("ns", "p1", "main")
        r.handoff.pods = r.pods
        r.handoff.holders = PodResourcesClient(str(r.kubelet.dir / "absent.sock"), timeout=1)
        with pytest.raises(grpc.RpcError, match="did not answer"):
            r.kubelet.start_container("ns", "p1", "main")
        r.handoff.holders = PodResourcesClient(str(r.kubelet.pod_resources_socket))
        (r.kubelet.dir / "not-a-dir").write_text("")
        r.handoff.cdi_dir = r.kubelet.dir / "not-a-dir" / "cdi"
        with pytest.raises(grpc.RpcError, match="cannot write the CDI spec"):
            r.kubelet.start_container("ns", "p1", "main")
        assert (r.count("api"), r.count("podresources"), r.count("cdi-write"), r.count("ok")) == (1, 1, 1, 0)


@pytest.mark.parametrize(("case", "reason"), [
    ("other-node", "wrong-node"), ("recreated", "wrong-pod"), ("deleting", "wrong-pod"), ("garbled", "bad-assignment")])
def test_pods_that_cannot_be_the_one_starting_are_refused(case: str, reason: str) -> None:
    with rig() as r:
        if case == "other-node":
            add_pod(r, 1, {"main": 1}, annotations={"gpuslice.io/assignment": slice_of(1, node="n2")})
        elif case == "recreated":  # same name, another pod: asks for 2 shares where kubelet allocated 1
            add_pod(r, 1, {"main": 2})
        elif case == "deleting":
            add_pod(r, 1, {"main": 1}, deleting=True)
        else:
            add_pod(r, 1, {"main": 1}, annotations={"gpuslice.io/assignment": "{"})
        r.kubelet.admit("ns", "p1", {"main": ids(1)})
        with pytest.raises(grpc.RpcError):
            r.kubelet.start_container("ns", "p1", "main")
        assert r.count(reason) == 1 and r.count("ok") == 0


def test_init_container_ids_reused_by_the_app_container_and_split_over_numa_nodes() -> None:
    """kubelet lists regular init containers nowhere in PodResources, but the app container reusing
    their ids holds them; the ids span both NUMA nodes (two ContainerDevices entries)."""
    with rig() as r:
        add_pod(r, 3, {"main": 2, "init": 2})
        both_numa = ids(0, 31)
        assert {SHARES[0].numa, SHARES[31].numa} == {0, 1}
        r.kubelet.admit("ns", "p3", {"init": both_numa, "main": both_numa}, init=("init",))
        assert_own(r, 3, "init")
        assert_own(r, 3, "main")
        # an init container alone holding shares is invisible in PodResources: refused, never guessed
        add_pod(r, 4, {"init": 1})
        r.kubelet.admit("ns", "p4", {"init": ids(7)}, init=("init",))
        with pytest.raises(grpc.RpcError, match="refusing to guess"):
            r.kubelet.start_container("ns", "p4", "init")


def test_sweep_removes_specs_of_pods_gone_from_kubelet() -> None:
    with rig() as r:
        for n in (0, 1):
            add_pod(r, n, {"main": 1})
            r.kubelet.admit("ns", f"p{n}", {"main": ids(n)})
            assert_own(r, n)
        assert r.handoff.sweep() == [] and len(r.handoff.claims()) == 2
        r.kubelet.remove_pod("ns", "p0")
        (gone,) = r.handoff.sweep()
        assert [c.pod.name for c in r.handoff.claims()] == ["p1"]
        assert [p.name for p in r.cdi.glob("*.json")] == [f"gpuslice.io-slice-{r.handoff.claims()[0].cdi_device}.json"]
        assert gone != r.handoff.claims()[0].cdi_device
        assert r.metrics.registry.get_sample_value("gpuslice_agent_cdi_specs_removed_total") == 1
        r.kubelet.stop()  # kubelet away: nothing is removed on a guess
        r.kubelet.remove_pod("ns", "p1")
        assert r.handoff.sweep() == [] and len(list(r.cdi.glob("*.json"))) == 1


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(2, 6))
def test_random_admission_orders(rnd: random.Random, n_pods: int) -> None:
    """Random interleavings of admit, start (and restarts), termination and sweep, with kubelet
    picking random free ids (so ids are reused): every container start gets its own pod's slice."""
    with rig() as r:
        free = list(range(len(SHARES)))
        state: dict[int, str] = {}  # pod -> "new" | "admitted" | "gone"
        for n in range(n_pods):
            add_pod(r, n, {"main": 1 + n % 3}, created=f"2026-11-28T19:00:0{rnd.randrange(2)}Z")
            state[n] = "new"
        held: dict[int, list[int]] = {}
        starts = 0
        for _ in range(4 * n_pods):
            n = rnd.randrange(n_pods)
            if state[n] == "new":
                picked = rnd.sample(free, 1 + n % 3)
                free = [i for i in free if i not in picked]
                held[n] = picked
                r.kubelet.admit("ns", f"p{n}", {"main": ids(*picked)})
                state[n] = "admitted"
            elif state[n] == "admitted" and rnd.random() < 0.7:
                assert_own(r, n)
                starts += 1
            elif state[n] == "admitted":
                r.kubelet.remove_pod("ns", f"p{n}")
                free += held.pop(n)
                state[n] = "new"  # a new incarnation of the same pod comes later
            if rnd.random() < 0.2:
                r.handoff.sweep()
        assert r.count("ok") == starts
        assert sum(s.value for m in r.metrics.registry.collect() if m.name == "gpuslice_agent_handoffs"
                   for s in m.samples if s.name.endswith("_total")) == starts  # no refusal either
