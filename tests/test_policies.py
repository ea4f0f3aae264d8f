"""The example policies in policies/: valid for `gpuslice policy check`, default.yaml equal to the
schema's defaults (so the docs match the code), and the MI300X file true to the DESIGN's facts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from extender.core.policy import Policy, load_policy, parse_policy, profile_rps
from extender.core.requests import parse_slice_request
from extender.core.sizing import size_for_target

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"
DEFAULT = POLICIES / "default.yaml"
INFERENCE = POLICIES / "mi300x-inference.yaml"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extender", "policy", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", [DEFAULT, INFERENCE], ids=lambda p: p.name)
def test_policy_check_accepts_the_shipped_policies(path: Path) -> None:
    out = check(path)
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout


def test_policy_check_rejects_an_invalid_file_with_field_level_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(INFERENCE.read_text().replace("sharedFraction: 0.125", "sharedFraction: 0.9")
                   .replace("mode: spread", "mode: diagonal").replace("minMemory: 60G", "minMemory: sixty"))
    out = check(bad)
    assert out.returncode == 1
    assert "invalid" in out.stderr
    assert "burst.sharedFraction: Input should be less than or equal to 0.5 (got 0.9)" in out.stderr
    assert "layout.mode: Input should be 'spread' (got 'diagonal')" in out.stderr
    assert "profiles.llama-3.1-8b.minMemory:" in out.stderr and "'sixty'" in out.stderr


def test_policy_check_rejects_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("burst:\n  sharedFraktion: 0.2\n")
    out = check(bad)
    assert out.returncode == 1 and "burst.sharedFraktion: Extra inputs are not permitted" in out.stderr


def test_default_yaml_equals_the_schema_defaults() -> None:
    assert load_policy(DEFAULT).model_dump() == parse_policy({}).model_dump() == Policy().model_dump()
    assert load_policy(DEFAULT).version == Policy().version


def _missing_fields(model: type[BaseModel], doc: object, path: str) -> list[str]:
    """Schema fields (recursively through sections and the model table) that the document leaves out."""
    assert isinstance(doc, dict), path
    missing = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in doc:
            missing.append(f"{path}{key}")
            continue
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            missing += _missing_fields(sub, doc[key], f"{path}{key}.")
    return missing


def test_default_yaml_spells_out_every_field() -> None:
    doc = yaml.safe_load(DEFAULT.read_text())
    assert _missing_fields(Policy, doc, "") == []
    model_cls = Policy.model_fields["models"].annotation.__args__[1]  # dict[str, GpuModel]
    for name, entry in doc["models"].items():
        assert _missing_fields(model_cls, entry, f"models.{name}.") == []


def test_default_yaml_explains_every_field() -> None:
    """Each key line carries a comment, or follows a comment line (for a section or a commented block)."""
    lines = DEFAULT.read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        key = stripped.split(":", 1)[0]
        prev = next((p.strip() for p in reversed(lines[:i]) if p.strip()), "")
        is_section = stripped.endswith(":")
        if "#" not in line and not prev.startswith("#") and not is_section and key not in ("memory-bound",
                                                                                              "compute-bound"):
            undocumented.append(stripped)
    assert undocumented == []


# --- the MI300X inference policy ------------------------------------------------------------------

@pytest.fixture(scope="module")
def inference() -> Policy:
    return load_policy(INFERENCE)


def test_llama_profile_is_the_measured_one(inference: Policy) -> None:
    prof = inference.profiles["llama-3.1-8b"]
    assert prof.gpuModel == "MI300X" and prof.workloadClass == "memory-bound"
    assert prof.minMemory == 60 * 10**9
    assert [(p.computeUnits, p.rps) for p in prof.points] == [(30, 5.6), (32, 7.2), (64, 10.6), (76, 10.8),
                                                              (128, 13.5)]
    # Doubling CUs: +47% (32 -> 64), then +27% (64 -> 128).
    assert profile_rps(prof, 64) / profile_rps(prof, 32) == pytest.approx(1.47, abs=0.01)
    assert profile_rps(prof, 128) / profile_rps(prof, 64) == pytest.approx(1.27, abs=0.01)


def test_inference_rules(inference: Policy) -> None:
    mi300x = inference.models["MI300X"]
    assert (mi300x.computeUnits, mi300x.xcds, mi300x.balanced_multiple, mi300x.bandwidthGBps) == (304, 8, 32, 5300)
    assert inference.rounding.mode == "balanced"
    assert inference.interference.memoryBoundPenalty == 0.13
    assert inference.classes.maxMemoryBoundPerGpu == 2
    share = inference.classes.bandwidthShare
    assert 2 * share["memory-bound"] + share["compute-bound"] <= inference.classes.bandwidthBudget
    assert 3 * share["memory-bound"] > inference.classes.bandwidthBudget


def test_illustrative_profiles_are_marked(inference: Policy) -> None:
    text = INFERENCE.read_text()
    for name in inference.profiles:
        if name != "llama-3.1-8b":
            assert name.startswith("illustrative-")
            assert f"{name}:" in text and "ILLUSTRATIVE, NOT MEASURED" in text.split(f"{name}:", 1)[1].split("\n")[0]
    assert inference.profiles["illustrative-embedding"].workloadClass == "compute-bound"


# Sized beside the worst co-tenancy the policy allows: one memory-bound and one compute-bound tenant
# (bandwidth 0.5 + 0.5 + 0.2 = the 1.2 budget), 16% lost; with no room left beside it (256 of the 272
# guaranteeable CUs), none.
@pytest.mark.parametrize(("target", "cus"), [(5, 32), (6, 32), (7, 64), (8, 64), (10.6, 128), (11, 128),
                                             (12, 256), (13.5, 256)])
def test_target_rps_sizes_in_balanced_steps(inference: Policy, target: float, cus: int) -> None:
    sized = size_for_target(inference, "llama-3.1-8b", target)
    assert sized.cus == cus and sized.predicted_rps >= target
    lost = 0.0 if cus == 256 else 0.16
    assert sized.loss == pytest.approx(lost)


def test_a_pod_asking_for_8_rps_gets_64_cus_and_60g(inference: Policy) -> None:
    req = parse_slice_request({}, {"gpuslice.io/profile": "llama-3.1-8b", "gpuslice.io/target-rps": "8"}, inference)
    assert (req.compute_cus, req.memory_bytes, req.workload_class) == (64, 60 * 10**9, "memory-bound")
    assert req.guaranteed_cus(inference, inference.models["MI300X"], 304) == 64
