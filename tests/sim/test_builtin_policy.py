"""The simulator's built-in MI300X policy is the shipped policies/mi300x-inference.yaml, byte for byte."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_inference_policy_is_the_shipped_file() -> None:
    shipped = (ROOT / "policies" / "mi300x-inference.yaml").read_text()
    builtin = (ROOT / "extender" / "sim" / "data" / "mi300x-inference.yaml").read_text()
    assert builtin == shipped, "copy policies/mi300x-inference.yaml to extender/sim/data/ (package data)"
