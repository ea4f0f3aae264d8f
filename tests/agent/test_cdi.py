"""CDI spec files: the document CDI expects, atomic replacement, removal and listing."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from extender.agent.cdi import (
    CDI_VERSION,
    CdiError,
    ContainerEdits,
    DeviceNode,
    Kind,
    Mount,
    read_spec,
    remove_spec,
    spec_devices,
    write_spec,
)

KIND = Kind("gpuslice.io", "slice")
EDITS = ContainerEdits(env={"A": "1", "B": "x=y"},
                       device_nodes=(DeviceNode("/dev/kfd"), DeviceNode("/dev/dri/renderD128", "/dev/dri/renderD130")),
                       mounts=(Mount("/opt/lib", "/usr/lib/x"),))


def test_document_is_a_cdi_spec(tmp_path: Path) -> None:
    path = write_spec(tmp_path, KIND, "abc-01", EDITS)
    assert path.name == "gpuslice.io-slice-abc-01.json" and oct(path.stat().st_mode & 0o777) == "0o644"
    data = json.loads(path.read_text())
    assert data == {"cdiVersion": CDI_VERSION, "kind": "gpuslice.io/slice", "devices": [{
        "name": "abc-01", "containerEdits": {
            "env": ["A=1", "B=x=y"],
            "deviceNodes": [{"path": "/dev/kfd", "permissions": "rw"},
                            {"path": "/dev/dri/renderD128", "hostPath": "/dev/dri/renderD130", "permissions": "rw"}],
            "mounts": [{"hostPath": "/opt/lib", "containerPath": "/usr/lib/x",
                        "options": ["ro", "nosuid", "nodev", "bind"]}]}}]}
    assert read_spec(path) == ("gpuslice.io/slice", "abc-01", EDITS)
    assert KIND.qualified("abc-01") == "gpuslice.io/slice=abc-01"


@pytest.mark.parametrize("name", ["", "-a", "a-", "a/b", "a=b", "a b", "é"])
def test_bad_device_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CdiError) as err:
        write_spec(tmp_path, KIND, name, EDITS)
    assert err.value.key == "cdi.device"
    assert list(tmp_path.iterdir()) == []


def test_bad_kinds_are_refused() -> None:
    with pytest.raises(CdiError):
        Kind("gpuslice", "slice")  # a vendor is a domain
    with pytest.raises(CdiError):
        Kind("gpuslice.io", "sl.ice")


def test_replace_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A reader racing the writer sees the old or the new document, never a partial one."""
    big = ContainerEdits(env={f"K{i}": "v" * 200 for i in range(200)})
    write_spec(tmp_path, KIND, "d", EDITS)
    stop = threading.Event()
    seen: set[int] = set()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(len(read_spec(tmp_path / KIND.file_name("d"))[2].env))
            except CdiError as exc:
                bad.append(str(exc))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(40):
        write_spec(tmp_path, KIND, "d", big if i % 2 else EDITS)
    stop.set()
    t.join()
    assert not bad and seen <= {2, 200}
    assert [p.name for p in tmp_path.iterdir()] == ["gpuslice.io-slice-d.json"]


def test_list_and_remove(tmp_path: Path) -> None:
    write_spec(tmp_path, KIND, "one", EDITS)
    write_spec(tmp_path, KIND, "two", EDITS)
    write_spec(tmp_path, Kind("other.io", "gpu"), "one", EDITS)  # another vendor's file: not ours
    (tmp_path / ".gpuslice.io-slice-x.json.123.tmp").write_text("{")  # a crashed writer's leftover
    assert sorted(spec_devices(tmp_path, KIND)) == ["one", "two"]
    assert remove_spec(tmp_path, KIND, "one") is True and remove_spec(tmp_path, KIND, "one") is False
    assert sorted(spec_devices(tmp_path, KIND)) == ["two"]
    assert spec_devices(tmp_path / "absent", KIND) == {}


def test_unreadable_spec_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"kind": "a.b/c", "devices": []}))
    with pytest.raises(CdiError):
        read_spec(tmp_path / "x.json")
    assert os.listdir(tmp_path) == ["x.json"]
