"""The policy schema: documented defaults, every section, field-level errors, references, helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from extender.core.policy import (
    PolicyError,
    load_policy,
    load_policy_text,
    parse_policy,
    profile_rps,
    round_cus,
)

GI = 2**30
POINTS = [{"computeUnits": 30, "rps": 5.6}, {"computeUnits": 32, "rps": 7.2}, {"computeUnits": 64, "rps": 10.6},
          {"computeUnits": 76, "rps": 10.8}, {"computeUnits": 128, "rps": 13.5}]
LLAMA = {"gpuModel": "MI300X", "class": "memory-bound", "minMemory": "60G", "points": POINTS}


@pytest.mark.parametrize("doc", [None, {}])
def test_an_empty_document_is_the_documented_defaults(doc: object) -> None:
    p = parse_policy(doc)
    assert p.apiVersion == "gpuslice.io/v1"
    assert p.prefix == "gpuslice.io"
    assert p.defaultModel == "MI300X"
    mi300x = p.models["MI300X"]
    assert (mi300x.computeUnits, mi300x.xcds, mi300x.shaderEngines, mi300x.memory) == (304, 8, 32, 192 * GI)
    assert mi300x.balanced_multiple == 32 and mi300x.bandwidthGBps == 5300.0
    assert set(p.models) == {"MI300X", "MI325X", "MI250X"}
    assert (p.rounding.mode, p.rounding.minComputeUnits) == ("balanced", 8)
    assert p.layout.mode == "spread"
    assert p.burst.sharedFraction == 0.125
    assert p.scoring.strategy == "binpack"
    w = p.scoring.weights
    assert (w.packing, w.complementarity, w.fragmentation, w.topology) == (1.0, 1.0, 0.5, 0.25)
    c = p.classes
    assert (c.default, c.maxMemoryBoundPerGpu, c.maxComputeBoundPerGpu, c.bandwidthBudget) == (
        "memory-bound", 2, None, None)
    assert c.bandwidthShare == {"memory-bound": 0.5, "compute-bound": 0.2}
    assert (p.interference.memoryBoundPenalty, p.interference.computeBoundPenalty) == (0.13, 0.03)
    assert p.overcommit.memory == 1.0
    assert (p.solver.enabled, p.solver.timeLimitMs, p.solver.workers) == (True, 15, 1)
    assert p.profiles == {} and p.quotas == {}
    assert p.reservations.ttlSeconds == 60.0
    assert p.memoryEnforcement.action == "monitor"


def test_empty_yaml_text_is_valid() -> None:
    assert load_policy_text("", "x").version == parse_policy({}).version
    assert load_policy_text("# only a comment\n").prefix == "gpuslice.io"


def test_every_section_can_be_set() -> None:
    p = parse_policy({
        "apiVersion": "gpuslice.io/v1",
        "prefix": "slices.example.com",
        "models": {"MI300X": {"computeUnits": 304, "xcds": 8, "shaderEngines": 32, "memory": "192Gi",
                              "bandwidthGBps": 5300},
                   "MI308X": {"computeUnits": 80, "xcds": 4, "shaderEngines": 16, "memory": "192Gi",
                              "bandwidthGBps": 5300, "balancedMultiple": 8}},
        "defaultModel": "MI308X",
        "rounding": {"mode": "powerOfTwo", "minComputeUnits": 16},
        "layout": {"mode": "spread"},
        "burst": {"sharedFraction": 0.25},
        "scoring": {"strategy": "spread", "weights": {"packing": 2, "complementarity": 0, "fragmentation": 1,
                                                      "topology": 0}},
        "classes": {"default": "compute-bound", "maxMemoryBoundPerGpu": None, "maxComputeBoundPerGpu": 4,
                    "bandwidthShare": {"memory-bound": 0.6, "compute-bound": 0.1}, "bandwidthBudget": 1.0},
        "interference": {"memoryBoundPenalty": 0.2, "computeBoundPenalty": 0.0},
        "overcommit": {"memory": 1.5},
        "solver": {"enabled": False, "timeLimitMs": 100, "workers": 4},
        "profiles": {"llama": LLAMA},
        "quotas": {"team-a": {"maxCompute": 2000, "maxMemory": "100Gi", "maxTenants": 3}},
        "reservations": {"ttlSeconds": 5},
        "memoryEnforcement": {"action": "evict"},
    })
    assert p.prefix == "slices.example.com" and p.defaultModel == "MI308X"
    assert p.models["MI308X"].balanced_multiple == 8 and p.models["MI300X"].memory == 192 * GI
    assert (p.rounding.mode, p.rounding.minComputeUnits, p.layout.mode) == ("powerOfTwo", 16, "spread")
    assert p.burst.sharedFraction == 0.25 and p.scoring.strategy == "spread" and p.scoring.weights.packing == 2
    assert p.classes.maxMemoryBoundPerGpu is None and p.classes.maxComputeBoundPerGpu == 4
    assert p.classes.bandwidthBudget == 1.0 and p.classes.bandwidthShare["memory-bound"] == 0.6
    assert p.interference.memoryBoundPenalty == 0.2 and p.overcommit.memory == 1.5
    assert (p.solver.enabled, p.solver.timeLimitMs, p.solver.workers) == (False, 100, 4)
    prof = p.profiles["llama"]
    assert (prof.workloadClass, prof.minMemory, len(prof.points)) == ("memory-bound", 60 * 10**9, 5)
    q = p.quotas["team-a"]
    assert (q.maxCompute, q.maxMemory, q.maxTenants) == (2000, 100 * GI, 3)
    assert p.reservations.ttlSeconds == 5 and p.memoryEnforcement.action == "evict"


def test_a_models_table_replaces_the_default_one() -> None:
    p = parse_policy({"models": {"MI300X": {"computeUnits": 304, "xcds": 8, "shaderEngines": 32,
                                            "memory": 206158430208, "bandwidthGBps": 5300}}})
    assert set(p.models) == {"MI300X"}


BAD = [
    # (document, field path, bad value, reason substring)
    ({"apiVersion": "v2"}, "apiVersion", "v2", "gpuslice.io/v1"),
    ({"prefix": ""}, "prefix", "", "at least 1"),
    ({"prefix": "gpuslice.io/x"}, "prefix", "gpuslice.io/x", "DNS subdomain"),
    ({"prefix": "GPUslice.io"}, "prefix", "GPUslice.io", "DNS subdomain"),
    ({"prefix": "gpu slice.io"}, "prefix", "gpu slice.io", "DNS subdomain"),
    ({"defaultModel": "MI999"}, "defaultModel", "MI999", "not in models"),
    ({"models": {"MI300X": {"computeUnits": 0, "xcds": 8, "shaderEngines": 32, "memory": "192Gi",
                            "bandwidthGBps": 1}}}, "models.MI300X.computeUnits", 0, "greater than 0"),
    ({"models": {"MI300X": {"computeUnits": 304, "xcds": 8, "shaderEngines": 32, "memory": "huge",
                            "bandwidthGBps": 1}}}, "models.MI300X.memory", "huge", "byte quantity"),
    ({"models": {"MI300X": {"computeUnits": 304, "xcds": 8, "shaderEngines": 32, "memory": -1,
                            "bandwidthGBps": 1}}}, "models.MI300X.memory", -1, "negative"),
    ({"models": {"MI300X": {"computeUnits": 304, "xcds": 8, "shaderEngines": 32, "memory": "1Gi"}}},
     "models.MI300X.bandwidthGBps", None, "required"),
    ({"rounding": {"mode": "nearest"}}, "rounding.mode", "nearest", "'exact', 'balanced' or 'powerOfTwo'"),
    ({"rounding": {"minComputeUnits": 0}}, "rounding.minComputeUnits", 0, "greater than or equal to 1"),
    ({"layout": {"mode": "random"}}, "layout.mode", "random", "'spread'"),
    ({"layout": {"mode": "xcd"}}, "layout.mode", "xcd", "there is no xcd layout"),
    ({"models": {"X": {"computeUnits": 300, "xcds": 8, "shaderEngines": 32, "memory": "1Gi", "bandwidthGBps": 1}}},
     "models.X.computeUnits", 300, "whole number of atoms of 8 CUs"),
    ({"models": {"X": {"computeUnits": 304, "xcds": 8, "shaderEngines": 32, "memory": "1Gi", "bandwidthGBps": 1,
                       "balancedMultiple": 12}}}, "models.X.balancedMultiple", 12, "run unmasked"),
    ({"burst": {"sharedFraction": 0.9}}, "burst.sharedFraction", 0.9, "less than or equal to 0.5"),
    ({"burst": {"sharedFraction": -0.1}}, "burst.sharedFraction", -0.1, "greater than or equal to 0"),
    ({"scoring": {"strategy": "random"}}, "scoring.strategy", "random", "'binpack' or 'spread'"),
    ({"scoring": {"weights": {"packing": -1}}}, "scoring.weights.packing", -1, "greater than or equal to 0"),
    ({"classes": {"default": "auto"}}, "classes.default", "auto", "'memory-bound' or 'compute-bound'"),
    ({"classes": {"maxMemoryBoundPerGpu": 0}}, "classes.maxMemoryBoundPerGpu", 0, "greater than or equal to 1"),
    ({"classes": {"maxComputeBoundPerGpu": -1}}, "classes.maxComputeBoundPerGpu", -1, "greater than or equal"),
    ({"classes": {"bandwidthShare": {"memory-bound": 1.5}}}, "classes.bandwidthShare.memory-bound", 1.5,
     "within 0..1"),
    ({"classes": {"bandwidthShare": {"io-bound": 0.1}}}, "classes.bandwidthShare.io-bound.[key]", "io-bound",
     "'memory-bound' or 'compute-bound'"),
    ({"classes": {"bandwidthBudget": 0}}, "classes.bandwidthBudget", 0, "greater than 0"),
    ({"interference": {"memoryBoundPenalty": 1.0}}, "interference.memoryBoundPenalty", 1.0, "less than 1"),
    ({"overcommit": {"memory": 0.5}}, "overcommit.memory", 0.5, "greater than or equal to 1"),
    ({"overcommit": {"memory": 8}}, "overcommit.memory", 8, "less than or equal to 4"),
    ({"solver": {"timeLimitMs": 0}}, "solver.timeLimitMs", 0, "greater than or equal to 1"),
    ({"solver": {"enabled": "sometimes"}}, "solver.enabled", "sometimes", "valid boolean"),
    ({"solver": {"workers": 9}}, "solver.workers", 9, "less than or equal to 8"),
    ({"profiles": {"m": {**LLAMA, "gpuModel": "H100"}}}, "profiles.m.gpuModel", "H100", "not in models"),
    ({"profiles": {"m": {**LLAMA, "class": "io-bound"}}}, "profiles.m.class", "io-bound", "'memory-bound'"),
    ({"profiles": {"m": {**LLAMA, "minMemory": "-1Gi"}}}, "profiles.m.minMemory", "-1Gi", "negative"),
    ({"profiles": {"m": {**LLAMA, "minMemory": "1.5"}}}, "profiles.m.minMemory", "1.5", "whole number of bytes"),
    ({"profiles": {"m": {"class": "memory-bound", "points": POINTS}}}, "profiles.m.minMemory", None, "required"),
    ({"profiles": {"m": {**LLAMA, "points": []}}}, "profiles.m.points", [], "at least 1 item"),
    ({"profiles": {"m": {**LLAMA, "points": POINTS[::-1]}}}, "profiles.m.points", [128, 76, 64, 32, 30],
     "strictly increase"),
    ({"profiles": {"m": {**LLAMA, "points": [POINTS[0], POINTS[0]]}}}, "profiles.m.points", [30, 30],
     "strictly increase"),
    ({"profiles": {"m": {**LLAMA, "points": [{"computeUnits": 0, "rps": 1}]}}},
     "profiles.m.points.0.computeUnits", 0, "greater than 0"),
    ({"profiles": {"m": {**LLAMA, "points": [{"computeUnits": 32, "rps": -1}]}}},
     "profiles.m.points.0.rps", -1, "greater than or equal to 0"),
    ({"quotas": {"team-a": {"maxCompute": -5}}}, "quotas.team-a.maxCompute", -5, "greater than or equal to 0"),
    ({"quotas": {"team-a": {"maxMemory": "many"}}}, "quotas.team-a.maxMemory", "many", "byte quantity"),
    ({"reservations": {"ttlSeconds": 0}}, "reservations.ttlSeconds", 0, "greater than 0"),
    ({"memoryEnforcement": {"action": "kill"}}, "memoryEnforcement.action", "kill", "'monitor' or 'evict'"),
    # Unknown keys anywhere are typos, never silently ignored.
    ({"prefixx": "a.io"}, "prefixx", "a.io", "Extra inputs are not permitted"),
    ({"burst": {"fraction": 0.1}}, "burst.fraction", 0.1, "Extra inputs are not permitted"),
    ({"scoring": {"weights": {"pack": 1}}}, "scoring.weights.pack", 1, "Extra inputs are not permitted"),
    ({"profiles": {"m": {**LLAMA, "minMem": "1Gi"}}}, "profiles.m.minMem", "1Gi", "Extra inputs are not permitted"),
    ({"profiles": {"m": {**LLAMA, "points": [{"computeUnits": 32, "rps": 1, "cus": 32}]}}},
     "profiles.m.points.0.cus", 32,
     "Extra inputs are not permitted"),
    ({"classes": {"maxMemoryBound": 2}}, "classes.maxMemoryBound", 2, "Extra inputs are not permitted"),
    ({"quotas": {"a": {"gpus": 1}}}, "quotas.a.gpus", 1, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("doc", "path", "value", "reason"), BAD, ids=[f"{p}={v!r}" for _, p, v, _r in BAD])
def test_errors_name_the_field_path_and_bad_value(doc: dict, path: str, value: object, reason: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(doc, "test.yaml")
    problems = err.value.problems
    assert len(problems) == 1, problems
    got_path, got_value, got_reason = problems[0]
    assert got_path == path
    if value is not None:
        assert got_value == value
    assert reason in got_reason
    assert f"{path}:" in str(err.value) and "test.yaml" in str(err.value)


def test_every_problem_is_reported_not_just_the_first() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy({"burst": {"sharedFraction": 2}, "solver": {"workers": 0}, "typo": 1})
    assert {p for p, _, _ in err.value.problems} == {"burst.sharedFraction", "solver.workers", "typo"}


@pytest.mark.parametrize("doc", [[1, 2], "text", 3])
def test_a_document_that_is_not_a_mapping(doc: object) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(doc)
    assert err.value.problems == [("(document)", doc, "a policy is a mapping of fields")]


def test_invalid_yaml_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy_text("burst: [unclosed", "bad.yaml")
    assert err.value.problems[0][0] == "(document)" and "not valid YAML" in err.value.problems[0][2]
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "missing.yaml")
    assert err.value.problems[0][0] == "(file)" and "cannot read" in err.value.problems[0][2]


def test_load_policy_reads_a_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("burst:\n  sharedFraction: 0.25\nprofiles:\n  llama:\n    minMemory: 60G\n    points:\n"
                 "      - {computeUnits: 32, rps: 7.2}\n")
    p = load_policy(f)
    assert p.burst.sharedFraction == 0.25 and p.profiles["llama"].minMemory == 60 * 10**9


def test_version_is_a_stable_hash_of_the_effective_policy() -> None:
    a, b = parse_policy({}), parse_policy({"burst": {"sharedFraction": 0.125}})
    assert a.version == b.version and len(a.version) == 12
    assert parse_policy({"burst": {"sharedFraction": 0.25}}).version != a.version


def test_policies_are_immutable() -> None:
    p = parse_policy({})
    with pytest.raises(ValueError):
        p.burst.sharedFraction = 0.3  # type: ignore[misc]


def test_model_for_falls_back_to_the_default_model() -> None:
    p = parse_policy({})
    assert p.model_for("MI250X").computeUnits == 110
    assert p.model_for(None) is p.models["MI300X"]
    assert p.model_for("unknown") is p.models["MI300X"]


@pytest.mark.parametrize(("cus", "rps"), [(15, 2.8), (30, 5.6), (31, 6.4), (32, 7.2), (48, 8.9), (64, 10.6),
                                           (76, 10.8), (102, 12.15), (128, 13.5), (304, 13.5)])
def test_profile_rps_interpolates_and_is_flat_past_the_last_point(cus: int, rps: float) -> None:
    prof = parse_policy({"profiles": {"llama": LLAMA}}).profiles["llama"]
    assert profile_rps(prof, cus) == pytest.approx(rps)


@pytest.mark.parametrize(("mode", "minimum", "wanted", "total", "cus"), [
    ("exact", 8, 31, 304, 32), ("exact", 8, 3, 304, 8), ("exact", 1, 0, 304, 8), ("exact", 8, 400, 304, 304),
    ("exact", 1, 273, 304, 304), ("exact", 1, 272, 304, 272), ("balanced", 8, 273, 304, 304),
    ("balanced", 8, 31, 304, 32), ("balanced", 8, 33, 304, 64), ("balanced", 8, 300, 304, 304),
    ("balanced", 40, 1, 304, 64),
    ("powerOfTwo", 8, 33, 304, 64), ("powerOfTwo", 8, 129, 304, 256), ("powerOfTwo", 8, 257, 304, 304),
    ("powerOfTwo", 8, 2, 304, 8),
])
def test_round_cus(mode: str, minimum: int, wanted: int, total: int, cus: int) -> None:
    p = parse_policy({"rounding": {"mode": mode, "minComputeUnits": minimum}})
    assert round_cus(p, p.models["MI300X"], total, wanted) == cus

