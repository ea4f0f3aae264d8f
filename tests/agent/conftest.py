from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"


@pytest.fixture
def host(tmp_path: Path):
    """A writable copy of a recorded host tree: host("mi300x-spx") -> Path."""

    def copy(layout: str) -> Path:
        dest = tmp_path / layout
        shutil.copytree(FIXTURES / layout, dest)
        return dest

    return copy
