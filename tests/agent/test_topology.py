from __future__ import annotations

import logging
from pathlib import Path

from extender.agent.topology import bdf_of, parse_properties, read_topology
from extender.core.inventory import format_inventory, parse_inventory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
NODES = "sys/class/kfd/kfd/topology/nodes"


def test_mi300x_spx() -> None:
    t = read_topology(FIXTURES / "mi300x-spx")
    assert t.skipped == ()
    assert len(t.gpus) == 8
    g = t.gpus[0]
    assert (g.node, g.info.index, g.info.model, g.info.computeUnits, g.info.xcds, g.info.shaderEngines) == (
        2, 0, "MI300X", 304, 8, 32)
    assert g.info.memoryBytes == 192 << 30
    assert g.info.partition == "SPX/NPS1" and g.info.renderMinor == 128 and g.bdf == "0000:05:00.0"
    assert g.info.id == "0x2c1d5a6b7e8f0000" and g.uuid == "GPU-2C1D5A6B7E8F0000"
    assert [x.info.numaNode for x in t.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({x.info.hiveId for x in t.gpus}) == 1
    assert all(x.info.healthy for x in t.gpus)
    # the published annotation is exactly what the extender parses back
    assert parse_inventory(format_inventory(t.inventory())) == t.inventory()


def test_mi300x_cpx_has_64_partitions_of_38_cus() -> None:
    t = read_topology(FIXTURES / "mi300x-cpx")
    assert len(t.gpus) == 64
    assert {(g.info.computeUnits, g.info.xcds, g.info.shaderEngines, g.info.memoryBytes) for g in t.gpus} == {
        (38, 1, 4, 24 << 30)}
    assert {g.info.partition for g in t.gpus} == {"CPX/NPS4"}
    assert len({g.info.id for g in t.gpus}) == 64 and len({g.gpu_id for g in t.gpus}) == 64
    # partitions of one physical GPU share its PCI address (the partition number sits above bit 27)
    assert {g.bdf for g in t.gpus[:8]} == {"0000:05:00.0"}
    assert [g.info.index for g in t.gpus] == list(range(64))


def test_mi250x() -> None:
    t = read_topology(FIXTURES / "mi250x")
    assert [(g.info.model, g.info.computeUnits, g.info.shaderEngines, g.info.xcds) for g in t.gpus] == [
        ("MI250X", 110, 8, 1)] * 8
    assert t.gpus[0].info.partition is None


def test_malformed_and_missing_files_are_skipped_with_reason(host, caplog) -> None:
    root: Path = host("mi300x-spx")
    (root / NODES / "3/properties").write_text("simd_count 1216\ngarbage line here\n")
    (root / NODES / "4/gpu_id").unlink()
    (root / NODES / "5/mem_banks/0/properties").write_text("heap_type one\n")
    props = (root / NODES / "6/properties").read_text()
    (root / NODES / "6/properties").write_text("\n".join(x for x in props.splitlines() if "simd_per_cu" not in x))
    (root / NODES / "junk").mkdir()
    with caplog.at_level(logging.WARNING):
        t = read_topology(root)
    assert [g.node for g in t.gpus] == [2, 4, 7, 8, 9]  # node 4 lost only its gpu_id: no VRAM accounting
    assert [g.info.index for g in t.gpus] == [0, 1, 2, 3, 4] and t.gpus[1].gpu_id is None
    reasons = " | ".join(f"{p}: {r}" for p, r in t.skipped)
    assert "line 2 is not" in reasons and "gpu_id" in reasons and "simd_per_cu" in reasons
    assert "no VRAM memory bank" in reasons and "not a number" in reasons
    assert "skipping KFD node" in caplog.text


def test_ras_errors_and_vanished_pci_device_make_gpu_unhealthy(host) -> None:
    root: Path = host("mi300x-spx")
    (root / "sys/bus/pci/devices/0000:26:00.0/ras/umc_err_count").write_text("ue: 3\nce: 10\n")
    import shutil
    shutil.rmtree(root / "sys/bus/pci/devices/0000:46:00.0")
    t = read_topology(root)
    health = [g.info.healthy for g in t.gpus]
    assert health == [True, False, False, True, True, True, True, True]
    assert "umc: 3 uncorrectable" in t.gpus[1].problems[0]
    assert "is gone" in t.gpus[2].problems[0]


def test_no_topology_at_all(tmp_path: Path) -> None:
    t = read_topology(tmp_path)
    assert t.gpus == () and "no KFD topology" in t.skipped[0][1]


def test_property_and_bdf_helpers() -> None:
    assert parse_properties("a 1\n\nb 18446744073709551615\n") == {"a": 1, "b": 2**64 - 1}
    assert bdf_of(0, 0x0508) == "0000:05:01.0"
    assert bdf_of(1, (3 << 28) | 0xE5 << 8 | 0x3) == "0001:e5:00.3"


def test_minimal_properties_still_describe_a_gpu(tmp_path: Path) -> None:
    node = tmp_path / NODES / "1"
    (node / "mem_banks/0").mkdir(parents=True)
    (node / "properties").write_text("simd_count 440\nsimd_per_cu 4\narray_count 8\nsimd_arrays_per_engine 1\n"
                                     "gfx_target_version 90010\n")
    (node / "mem_banks/0/properties").write_text("heap_type 2\nsize_in_bytes 1024\n")
    (g,) = read_topology(tmp_path).gpus
    assert (g.info.id, g.info.model, g.info.computeUnits, g.info.shaderEngines, g.info.xcds, g.bdf, g.gpu_id) == (
        "kfd-node-1", "gfx90a", 110, 8, 1, None, None)
