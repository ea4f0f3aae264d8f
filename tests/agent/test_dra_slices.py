"""The node's ResourceSlice: one shareable device per GPU with atom-stepped computeUnits and memory
capacities and selectable attributes, and a publisher that rewrites it (next pool generation) only when
a device changed, e.g. a GPU turned unhealthy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from extender.agent.dra.publisher import SlicePublisher
from extender.agent.dra.slices import DRIVER, PCIE_ROOT, device_name, guaranteeable_cus, resource_slice
from extender.agent.topology import read_topology
from extender.core.atoms import round_up_to_atoms


class Store:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.rv = 0

    def get_slice(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create_slice(self, body: dict[str, Any]) -> None:
        assert body["metadata"]["name"] not in self.objects
        self._put(body, "create")

    def replace_slice(self, name: str, body: dict[str, Any]) -> None:
        assert body["metadata"]["resourceVersion"] == self.objects[name]["metadata"]["resourceVersion"]
        self._put(body, "replace")

    def _put(self, body: dict[str, Any], verb: str) -> None:
        self.rv += 1
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        self.objects[body["metadata"]["name"]] = body
        self.writes.append(verb)


@pytest.mark.parametrize(("layout", "cus", "atom"), [("mi300x-spx", 272, 8), ("mi300x-cpx", 34, 1),
                                                     ("mi250x", 97, 1)])
def test_one_shareable_device_per_gpu_with_atom_stepped_capacity(host, layout: str, cus: int, atom: int) -> None:
    root = host(layout)
    topo = read_topology(root)
    body = resource_slice("n1", topo, 0.125, 3, root)
    spec = body["spec"]
    assert (body["apiVersion"], spec["driver"], spec["nodeName"]) == ("resource.k8s.io/v1", DRIVER, "n1")
    assert spec["pool"] == {"name": "n1", "generation": 3, "resourceSliceCount": 1}
    assert len(spec["devices"]) == len(topo.gpus)
    for gpu, dev in zip(topo.gpus, spec["devices"], strict=True):
        info = gpu.info
        assert dev["name"] == device_name(info) and dev["allowMultipleAllocations"] is True
        compute = dev["capacity"]["computeUnits"]
        assert compute["value"] == str(guaranteeable_cus(info, 0.125)) == str(cus)
        step = round_up_to_atoms(1, info.xcds)
        assert step == atom
        assert compute["requestPolicy"] == {"default": str(cus), "validRange": {"min": str(step), "step": str(step)}}
        assert int(compute["value"]) % step == 0
        assert dev["capacity"]["memory"] == {"value": str(info.memoryBytes)}
        attrs = dev["attributes"]
        assert attrs["model"] == {"string": info.model} and attrs["computeUnits"] == {"int": info.computeUnits}
        assert attrs["xcds"] == {"int": info.xcds} and attrs["healthy"] == {"bool": True}
        assert attrs["numaNode"] == {"int": info.numaNode}
        assert len(dev["name"]) <= 63 and dev["name"].replace("-", "").isalnum()


def test_hive_and_pcie_root_attributes(host) -> None:
    root = host("mi300x-spx")
    pci = root / "sys/bus/pci/devices"
    real = root / "sys/devices/pci0000:00/0000:00:01.1/0000:05:00.0"
    real.parent.mkdir(parents=True)
    os.rename(pci / "0000:05:00.0", real)
    os.symlink("../../../devices/pci0000:00/0000:00:01.1/0000:05:00.0", pci / "0000:05:00.0")
    devices = resource_slice("n1", read_topology(root), 0.125, 1, root)["spec"]["devices"]
    assert devices[0]["attributes"][PCIE_ROOT] == {"string": "pci0000:00"}
    assert PCIE_ROOT not in devices[1]["attributes"]  # a plain directory: no root complex to name
    assert devices[0]["attributes"]["hiveId"]["string"].startswith("0x")


def test_health_change_rewrites_the_slice_with_the_next_generation(host) -> None:
    root: Path = host("mi300x-spx")
    store = Store()
    pub = SlicePublisher(store, "n1", root)
    assert pub.publish(read_topology(root), 0.125) is True
    assert pub.publish(read_topology(root), 0.125) is False
    (root / "sys/bus/pci/devices/0000:26:00.0/ras/umc_err_count").write_text("ue: 1\nce: 0\n")
    assert pub.publish(read_topology(root), 0.125) is True
    stored = store.objects["n1-gpu.gpuslice.io"]["spec"]
    assert stored["pool"]["generation"] == 2
    assert [d["attributes"]["healthy"]["bool"] for d in stored["devices"]] == [True, False] + [True] * 6
    assert store.writes == ["create", "replace"]


def test_a_restarted_agent_keeps_an_equal_slice_and_continues_the_generation(host) -> None:
    root = host("mi300x-spx")
    store = Store()
    SlicePublisher(store, "n1", root).publish(read_topology(root), 0.125)
    again = SlicePublisher(store, "n1", root)
    assert again.publish(read_topology(root), 0.125) is False
    assert again.publish(read_topology(root), 0.25) is True  # burst region grew: less to guarantee
    spec = store.objects["n1-gpu.gpuslice.io"]["spec"]
    assert spec["pool"]["generation"] == 2
    assert spec["devices"][0]["capacity"]["computeUnits"]["value"] == "232"
