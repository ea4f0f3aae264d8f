from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.agent.allocation import allocation_for
from extender.agent.topology import read_topology
from extender.cli import main
from extender.core.assignment import Assignment, GpuAssignment, parse_assignment
from extender.core.atoms import AtomError, is_xcc_complete
from extender.core.cumask import parse_cu_mask
from extender.core.errors import AssignmentError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
TOPOLOGIES = {name: read_topology(FIXTURES / name) for name in ("mi300x-spx", "mi300x-cpx", "mi250x")}
GIB = 1 << 30


def gpu(topology: str, index: int, cus: frozenset[int], burst: frozenset[int] = frozenset(),
        mem: int = 8 * GIB, limit: int = 16 * GIB) -> GpuAssignment:
    info = TOPOLOGIES[topology].gpus[index].info
    return GpuAssignment(index=index, id=info.id, cus=cus, burstCus=burst, memoryBytes=mem, memoryLimitBytes=limit)


def assign(*gpus: GpuAssignment) -> Assignment:
    return Assignment(node="n1", gpus=tuple(gpus), workload_class="memory-bound", policy="p", assignedAt="x")


def test_single_gpu_slice_on_spx() -> None:
    a = allocation_for(assign(gpu("mi300x-spx", 3, frozenset(range(64)), frozenset(range(272, 304)),
                                  limit=48 * GIB)), TOPOLOGIES["mi300x-spx"])
    assert a.envs == {
        "ROCR_VISIBLE_DEVICES": "GPU-2C1D5A6B7E8F0300", "HSA_CU_MASK": "0:0-63,272-303",
        "GPUSLICE_MEMORY_LIMIT_BYTES": str(48 * GIB), "GPUSLICE_MEMORY_FRACTION": "0.2500",
        "GPUSLICE_MEMORY_GUARANTEED_BYTES": str(8 * GIB)}
    assert a.devices == ("/dev/kfd", "/dev/dri/renderD131")


def test_two_gpus_are_visible_in_kfd_order_and_equal_masks_share_a_set() -> None:
    # listed out of order in the assignment: visible order is KFD node order
    a = allocation_for(assign(gpu("mi300x-spx", 5, frozenset(range(32))), gpu("mi300x-spx", 1, frozenset(range(32)))),
                       TOPOLOGIES["mi300x-spx"])
    assert a.envs["ROCR_VISIBLE_DEVICES"] == "GPU-2C1D5A6B7E8F0100,GPU-2C1D5A6B7E8F0500"
    assert a.envs["HSA_CU_MASK"] == "0-1:0-31"
    assert a.devices == ("/dev/kfd", "/dev/dri/renderD129", "/dev/dri/renderD133")


def test_whole_gpu_gets_no_cu_set() -> None:
    a = allocation_for(assign(gpu("mi250x", 0, frozenset(range(110)), limit=64 * GIB),
                              gpu("mi250x", 1, frozenset(range(0, 110, 2)))), TOPOLOGIES["mi250x"])
    assert a.envs["HSA_CU_MASK"].startswith("1:")
    assert a.envs["GPUSLICE_MEMORY_FRACTION"] == "1.0000,0.2500"
    only_whole = allocation_for(assign(gpu("mi250x", 0, frozenset(range(110)))), TOPOLOGIES["mi250x"])
    assert "HSA_CU_MASK" not in only_whole.envs


def test_unknown_gpu_or_cus_past_the_partition_fail_loudly() -> None:
    spx_gpu = gpu("mi300x-spx", 0, frozenset(range(64)))
    cpx = TOPOLOGIES["mi300x-cpx"]
    with pytest.raises(AssignmentError, match="past the GPU's 38 CUs"):
        allocation_for(assign(spx_gpu), cpx)  # the same id is partition 0 after a switch to CPX
    other = GpuAssignment(index=0, id="0xdead", cus=frozenset({1}), burstCus=frozenset(), memoryBytes=1,
                          memoryLimitBytes=1)
    with pytest.raises(AssignmentError, match="no GPU with this id"):
        allocation_for(assign(other), cpx)


@st.composite
def atoms(draw: st.DrawFn, total: int, xcds: int, taken: frozenset[int] = frozenset(), min_atoms: int = 1
          ) -> frozenset[int]:
    """A random XCC-complete CU set: the same number of CUs on every XCD (CU b is on XCD b % xcds),
    outside `taken`."""
    free = [[c for c in range(x, total, xcds) if c not in taken] for x in range(xcds)]
    n = draw(st.integers(min_atoms, min(len(f) for f in free)))
    return frozenset(c for f in free for c in draw(st.permutations(f))[:n])


@st.composite
def random_assignment(draw: st.DrawFn) -> tuple[str, Assignment]:
    layout = draw(st.sampled_from(sorted(TOPOLOGIES)))
    gpus = TOPOLOGIES[layout].gpus
    chosen = draw(st.lists(st.integers(0, len(gpus) - 1), min_size=1, max_size=4, unique=True))
    out = []
    for i in chosen:
        total, xcds = gpus[i].info.computeUnits, gpus[i].info.xcds
        cus = draw(atoms(total, xcds))
        burst = draw(atoms(total, xcds, cus, min_atoms=0)) if len(cus) < total else frozenset()
        out.append(gpu(layout, i, cus, burst, mem=GIB, limit=2 * GIB))
    return layout, assign(*out)


@settings(max_examples=150, deadline=None)
@given(random_assignment())
def test_mask_text_for_every_layout_parses_to_the_assigned_cus(case: tuple[str, Assignment]) -> None:
    layout, assignment = case
    alloc = allocation_for(assignment, TOPOLOGIES[layout])
    by_id = {g.id: g.cus | g.burstCus for g in assignment.gpus}
    expected = {pos: by_id[k.info.id] for pos, k in enumerate(alloc.gpus)
                if len(by_id[k.info.id]) < k.info.computeUnits}
    if expected:
        parsed = parse_cu_mask(alloc.envs["HSA_CU_MASK"], gpu_count=len(alloc.gpus),
                               cus_per_gpu={p: k.info.computeUnits for p, k in enumerate(alloc.gpus)})
        assert parsed == expected
    assert len(alloc.envs["ROCR_VISIBLE_DEVICES"].split(",")) == len(assignment.gpus)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_masks_missing_an_xcd_are_refused(data: st.DataObject) -> None:
    """On the 8-XCD MI300X any guarantee, or guarantee + burst, with uneven bits per XCD is refused
    naming the field; on 1-XCD partitions (CPX) every non-empty set is whole atoms."""
    spx = TOPOLOGIES["mi300x-spx"]
    cus = frozenset(data.draw(st.sets(st.integers(0, 303), min_size=1, max_size=303)))
    burst = frozenset(data.draw(st.sets(st.integers(0, 303)))) - cus
    assignment = assign(gpu("mi300x-spx", 0, cus, burst))
    bad = [key for key, s in (("cus", cus), ("cus+burstCus", cus | burst))
           if len(s) < 304 and not is_xcc_complete(s, 8)]
    if bad:
        with pytest.raises(AtomError) as err:
            allocation_for(assignment, spx)
        assert err.value.key == f"gpus[0].{bad[0]}" and "atoms of 8 CUs" in err.value.reason
    else:
        allocation_for(assignment, spx)
    cpx_cus = frozenset(c % 38 for c in cus)
    allocation_for(assign(gpu("mi300x-cpx", 3, cpx_cus, frozenset(range(38)) - cpx_cus)), TOPOLOGIES["mi300x-cpx"])


def test_unsafe_masks_from_the_issue_are_refused() -> None:
    spx = TOPOLOGIES["mi300x-spx"]
    for cus in (range(32, 36), range(5, 256, 8), range(4), [0, 8, 16, 24]):  # XCDs 0-3 / XCD 5 / 0-3 / 0 only
        with pytest.raises(AtomError, match="would run unmasked"):
            allocation_for(assign(gpu("mi300x-spx", 0, frozenset(cus))), spx)
    with pytest.raises(AtomError, match=r"cus\+burstCus"):  # a whole guarantee, a burst on XCD 0 only
        allocation_for(assign(gpu("mi300x-spx", 0, frozenset(range(8)), frozenset({8}))), spx)
    whole = allocation_for(assign(gpu("mi300x-spx", 0, frozenset(range(8)), frozenset(range(8, 304)))), spx)
    assert "HSA_CU_MASK" not in whole.envs  # guarantee + burst is the whole GPU: no mask at all


def test_cli_inventory_and_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "inventory", "--root", str(FIXTURES / "mi300x-cpx")]) == 0
    inventory = json.loads(capsys.readouterr().out)
    assert len(inventory) == 64 and inventory[5]["computeUnits"] == 38
    a = assign(gpu("mi300x-cpx", 9, frozenset(range(16)), frozenset(range(33, 38)), limit=12 * GIB))
    f = tmp_path / "assignment.json"
    f.write_text(a.to_json())
    assert parse_assignment(f.read_text()) == a
    assert main(["agent", "env", "--root", str(FIXTURES / "mi300x-cpx"), "--assignment", str(f)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["ROCR_VISIBLE_DEVICES=GPU-2C1D5A6B7E8F0101", "HSA_CU_MASK=0:0-15,33-37",
                     f"GPUSLICE_MEMORY_LIMIT_BYTES={12 * GIB}", "GPUSLICE_MEMORY_FRACTION=0.5000",
                     f"GPUSLICE_MEMORY_GUARANTEED_BYTES={8 * GIB}", "DEVICE=/dev/kfd", "DEVICE=/dev/dri/renderD137"]
    f.write_text("{not json")
    assert main(["agent", "env", "--root", str(FIXTURES / "mi300x-cpx"), "--assignment", str(f)]) == 1
    assert "not JSON" in capsys.readouterr().err
