"""docs/: the policy reference is the schema's own output, and the README and docs link only files
that are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extender.policy_cli import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_policy_reference_is_in_sync_with_the_schema() -> None:
    assert (ROOT / "docs" / "policy-reference.md").read_text() == reference_markdown(), (
        "regenerate: gpuslice policy reference > docs/policy-reference.md")


def test_the_reference_lists_every_field() -> None:
    text = reference_markdown()
    for field in ("prefix", "sharedFraction", "maxMemoryBoundPerGpu", "timeLimitMs", "ttlSeconds", "minMemory",
                  "maxTenants", "action"):
        assert f"| `{field}` |" in text, field


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert not re.match(r"[a-z]+://", target), f"{page.name} links outside the repository: {target}"
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: {target} does not exist"
    assert "shared `DESIGN.md`" not in text and "../shared" not in text


def test_readme_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/design.md", "docs/operations.md", "docs/policy-reference.md"):
        assert f"]({doc})" in readme
