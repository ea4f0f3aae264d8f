"""Slice requests (DESIGN "Pod-facing API"): every key, labels or annotations, and every malformed value."""

from __future__ import annotations

import pytest

from extender.core.errors import SliceRequestError
from extender.core.policy import Policy, parse_policy
from extender.core.requests import KEYS, SliceRequest, has_slice_keys, parse_slice_request

GI = 2**30
P = "gpuslice.io"
# The DESIGN's measured MI300X facts for Llama-3.1-8B (batch 32); 64 CUs measured 10.6-10.7, use 10.6.
LLAMA = {"gpuModel": "MI300X", "class": "memory-bound", "minMemory": "60G",
         "points": [{"computeUnits": 30, "rps": 5.6}, {"computeUnits": 32, "rps": 7.2},
                    {"computeUnits": 64, "rps": 10.6}, {"computeUnits": 76, "rps": 10.8},
                    {"computeUnits": 128, "rps": 13.5}]}
EMBED = {"class": "compute-bound", "minMemory": "4Gi", "points": [{"computeUnits": 32, "rps": 100}]}


def policy(**overrides: object) -> Policy:
    return parse_policy({"profiles": {"llama": LLAMA, "embed": EMBED}, **overrides})


POLICY = policy()
# No interference at all: sizing is then the profile curve and the rounding alone (core/sizing.py budgets
# the worst co-tenancy the policy allows; tests/core/test_sizing.py covers that part).
ALONE = policy(interference={"memoryBoundPenalty": 0, "computeBoundPenalty": 0})


def keys(**kv: str) -> dict[str, str]:
    """Annotations under the default prefix; `target_rps` spells target-rps."""
    return {f"{P}/{k.replace('_', '-') if k == 'target_rps' else k}": v for k, v in kv.items()}


def parse(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None,
          pol: Policy = POLICY) -> SliceRequest | None:
    return parse_slice_request(labels, annotations, pol)


# --- well-formed requests ------------------------------------------------------------------------

def test_keys_are_the_design_table() -> None:
    assert set(KEYS) == {"vendor", "compute", "computeLimit", "memory", "memoryLimit", "count", "class",
                         "profile", "target-rps"}


@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_every_key_read_from_labels_or_annotations(where: str) -> None:
    kv = keys(vendor="amd", compute="100m", computeLimit="500m", memory="4Gi", memoryLimit="20Gi", count="2",
              **{"class": "compute-bound"})
    req = parse(**{where: kv})
    assert req == SliceRequest(vendor="amd", compute_millis=100, compute_limit_millis=500, memory_bytes=4 * GI,
                               memory_limit_bytes=20 * GI, count=2, workload_class="compute-bound")


def test_documented_defaults() -> None:
    req = parse(keys(compute="250m", memory="8Gi"))
    assert req is not None
    assert (req.vendor, req.count, req.compute_limit_millis, req.memory_limit_bytes) == ("amd", 1, 250, 8 * GI)
    assert req.workload_class == POLICY.classes.default == "memory-bound"
    assert req.profile is None and req.target_rps is None and req.compute_cus is None


def test_default_class_follows_the_policy() -> None:
    pol = policy(classes={"default": "compute-bound"})
    assert parse(keys(compute="250m", memory="8Gi"), pol=pol).workload_class == "compute-bound"


@pytest.mark.parametrize(("text", "millis"), [("1", 1000), ("0.5", 500), ("250m", 250), ("1m", 1), ("1000m", 1000)])
def test_compute_quantities(text: str, millis: int) -> None:
    assert parse(keys(compute=text, memory="1Gi")).compute_millis == millis


@pytest.mark.parametrize(("text", "nbytes"), [("4Gi", 4 * GI), ("60G", 60 * 10**9), ("1048576", 2**20),
                                               ("1.5Gi", 3 * GI // 2)])
def test_memory_quantities(text: str, nbytes: int) -> None:
    assert parse(keys(compute="100m", memory=text)).memory_bytes == nbytes


def test_annotations_win_over_labels_key_by_key() -> None:
    req = parse(annotations=keys(compute="300m"), labels=keys(compute="100m", memory="2Gi"))
    assert (req.compute_millis, req.memory_bytes) == (300, 2 * GI)


def test_no_keys_means_pass_through() -> None:
    assert parse() is None
    assert parse({}, {}) is None
    assert parse({"app": "web", "gpuslice.io/assignment": "{}", "gpuslice.io/inventory": "[]"}) is None
    assert not has_slice_keys(None, {"other.io/compute": "1"}, P)


def test_another_prefix_accepts_that_domain_verbatim() -> None:
    pol = policy(prefix="slices.example.com")
    req = parse({"slices.example.com/compute": "200m", "slices.example.com/memory": "1Gi",
                 "slices.example.com/class": "compute-bound"}, pol=pol)
    assert (req.compute_millis, req.memory_bytes, req.workload_class) == (200, GI, "compute-bound")
    # ...and the default domain is then nobody's business (pass-through).
    assert parse(keys(compute="200m", memory="1Gi"), pol=pol) is None
    with pytest.raises(SliceRequestError) as err:
        parse({"slices.example.com/compute": "2"}, pol=pol)
    assert err.value.key == "slices.example.com/compute"


# --- profiles and target-rps ---------------------------------------------------------------------

def test_profile_sizes_compute_from_target_rps() -> None:
    req = parse(keys(profile="llama", target_rps="8"), pol=ALONE)
    # Balanced rounding on MI300X steps by 32 CUs: 32 CUs give 7.2 req/s (< 8), 64 give 10.6.
    assert (req.compute_cus, req.predicted_rps) == (64, pytest.approx(10.6))
    assert req.compute_millis == 210  # the share that gives back 64 of 304 CUs: floor(64 / 304 * 1000)
    assert req.memory_bytes == req.memory_limit_bytes == 60 * 10**9  # the profile's minimum
    assert req.workload_class == "memory-bound" and req.profile == "llama" and req.target_rps == 8.0
    model = POLICY.models["MI300X"]
    assert req.guaranteed_cus(ALONE, model, 304) == 64


def test_target_rps_budgets_the_co_tenants_the_policy_allows() -> None:
    # Default class rules: one more memory-bound tenant, compute-bound ones without limit (bounded by the
    # 32-CU slices left in 272 guaranteeable CUs): at 64 CUs 1 + 5 co-tenants cost 28%, at 96 CUs 1 + 4 cost 25%.
    req = parse(keys(profile="llama", target_rps="8"))
    assert (req.compute_cus, req.predicted_rps) == (96, pytest.approx((10.8 + 20 / 52 * 2.7) * 0.75))


@pytest.mark.parametrize(("target", "cus", "rps"), [("5", 32, 7.2), ("7.2", 32, 7.2),
                                                     ("10.7", 96, 10.8 + 20 / 52 * 2.7),
                                                     ("13.5", 128, 13.5), ("500m", 32, 7.2)])
def test_target_rps_takes_the_smallest_balanced_size(target: str, cus: int, rps: float) -> None:
    req = parse(keys(profile="llama", target_rps=target), pol=ALONE)
    assert (req.compute_cus, req.predicted_rps) == (cus, pytest.approx(rps))


def test_exact_rounding_interpolates_between_points() -> None:
    pol = policy(rounding={"mode": "exact"}, interference={"memoryBoundPenalty": 0, "computeBoundPenalty": 0})
    req = parse(keys(profile="llama", target_rps="8"), pol=pol)
    # 7.2 + (40-32)/32 * 3.4 = 8.05 >= 8, while 39 CUs give 7.94.
    assert req.compute_cus == 40
    assert req.guaranteed_cus(pol, pol.models["MI300X"], 304) == 40


def test_explicit_compute_that_meets_the_target_is_kept() -> None:
    req = parse(keys(profile="llama", target_rps="8", compute="500m"))
    assert req.compute_millis == 500 and req.compute_cus is None
    assert req.predicted_rps is not None and req.predicted_rps >= 8


def test_explicit_compute_under_the_target_is_refused() -> None:
    # 100m is 31 CUs, rounded to 32: 7.2 req/s alone, less beside any co-tenant: under 7 req/s.
    with pytest.raises(SliceRequestError) as err:
        parse(keys(profile="llama", target_rps="7", compute="100m"))
    assert (err.value.key, err.value.value) == (f"{P}/compute", "100m")
    assert "under target-rps 7" in err.value.reason and "leave compute out" in err.value.reason


def test_class_from_profile_with_auto_or_nothing_and_overridable() -> None:
    assert parse(keys(profile="embed", compute="100m")).workload_class == "compute-bound"
    assert parse(keys(profile="embed", compute="100m", **{"class": "auto"})).workload_class == "compute-bound"
    assert parse(keys(profile="embed", compute="100m", **{"class": "memory-bound"})).workload_class == "memory-bound"


def test_profile_memory_above_minimum_is_kept() -> None:
    assert parse(keys(profile="llama", target_rps="5", memory="80G")).memory_bytes == 80 * 10**9


@pytest.mark.parametrize(("mode", "millis", "cus"), [
    ("balanced", 100, 32), ("exact", 100, 32), ("powerOfTwo", 100, 32),
    ("balanced", 10, 32), ("exact", 10, 8), ("powerOfTwo", 10, 8),
    ("balanced", 1000, 304), ("exact", 1000, 304), ("powerOfTwo", 1000, 304),
    ("balanced", 420, 128), ("exact", 420, 128), ("powerOfTwo", 420, 128),
])
def test_guaranteed_cus_rounding(mode: str, millis: int, cus: int) -> None:
    pol = policy(rounding={"mode": mode})
    req = parse(keys(compute=f"{millis}m", memory="1Gi"), pol=pol)
    assert req.guaranteed_cus(pol, pol.models["MI300X"], 304) == cus


def test_profile_cus_are_a_share_of_the_gpu_like_any_compute_request() -> None:
    req = parse(keys(profile="llama", target_rps="8"), pol=ALONE)
    mi300x = POLICY.models["MI300X"]  # a GPU of the profile's model exposing 152 of its 304 CUs (a partition)
    assert req.guaranteed_cus(ALONE, mi300x, 152) == 32
    assert req.limit_cus(304) == 64  # the limit defaults to the same share


# --- malformed and contradictory requests: key, value and reason ----------------------------------

BAD = [
    # (annotations, key, value, reason substring)
    (keys(vendor="nvidia", compute="1", memory="1Gi"), "vendor", "nvidia", "unsupported vendor"),
    (keys(vendor="AMD", compute="1", memory="1Gi"), "vendor", "AMD", "unsupported vendor"),
    (keys(vendor="", compute="1", memory="1Gi"), "vendor", "", "unsupported vendor"),
    (keys(compute="1500m", memory="1Gi"), "compute", "1500m", "more than one GPU"),
    (keys(compute="1.001", memory="1Gi"), "compute", "1.001", "more than one GPU"),
    (keys(compute="-100m", memory="1Gi"), "compute", "-100m", "negative"),
    (keys(compute="lots", memory="1Gi"), "compute", "lots", "not a Kubernetes quantity"),
    (keys(compute="", memory="1Gi"), "compute", "", "not a Kubernetes quantity"),
    (keys(compute="0", memory="1Gi"), "compute", "0", "greater than 0"),
    (keys(compute="0.0001", memory="1Gi"), "compute", "0.0001", "finer than 1m"),
    (keys(memory="1Gi"), "compute", None, "missing"),
    (keys(compute="200m", computeLimit="100m", memory="1Gi"), "computeLimit", "100m", "less than"),
    (keys(compute="200m", computeLimit="2", memory="1Gi"), "computeLimit", "2", "more than one GPU"),
    (keys(compute="200m", computeLimit="-1", memory="1Gi"), "computeLimit", "-1", "negative"),
    (keys(compute="200m", computeLimit="x", memory="1Gi"), "computeLimit", "x", "not a Kubernetes quantity"),
    (keys(compute="100m", memory="-1Gi"), "memory", "-1Gi", "negative"),
    (keys(compute="100m", memory="plenty"), "memory", "plenty", "not a Kubernetes quantity"),
    (keys(compute="100m", memory="0"), "memory", "0", "greater than 0"),
    (keys(compute="100m", memory="0.5"), "memory", "0.5", "whole number of bytes"),
    (keys(compute="100m"), "memory", None, "missing"),
    (keys(compute="100m", memory="8Gi", memoryLimit="4Gi"), "memoryLimit", "4Gi", "less than"),
    (keys(compute="100m", memory="8Gi", memoryLimit="-4Gi"), "memoryLimit", "-4Gi", "negative"),
    (keys(compute="100m", memory="8Gi", memoryLimit="big"), "memoryLimit", "big", "not a Kubernetes quantity"),
    (keys(compute="100m", memory="1Gi", count="0"), "count", "0", "at least 1"),
    (keys(compute="100m", memory="1Gi", count="-2"), "count", "-2", "at least 1"),
    (keys(compute="100m", memory="1Gi", count="1.5"), "count", "1.5", "whole number"),
    (keys(compute="100m", memory="1Gi", count="65"), "count", "65", "at most 64"),
    (keys(compute="100m", memory="1Gi", count="two"), "count", "two", "not a Kubernetes quantity"),
    (keys(compute="100m", memory="1Gi", **{"class": "gpu-hungry"}), "class", "gpu-hungry", "unknown class"),
    (keys(compute="100m", memory="1Gi", **{"class": "Memory-Bound"}), "class", "Memory-Bound", "unknown class"),
    (keys(compute="100m", memory="1Gi", **{"class": "auto"}), "class", "auto", "needs a profile"),
    (keys(compute="100m", memory="1Gi", profile="gpt-9"), "profile", "gpt-9", "unknown profile"),
    (keys(compute="100m", memory="1Gi", target_rps="8"), "target-rps", "8", "needs gpuslice.io/profile"),
    (keys(profile="llama", target_rps="0"), "target-rps", "0", "greater than 0"),
    (keys(profile="llama", target_rps="-3"), "target-rps", "-3", "greater than 0"),
    (keys(profile="llama", target_rps="fast"), "target-rps", "fast", "not a Kubernetes quantity"),
    (keys(profile="llama", target_rps="14"), "target-rps", "14", "reaches at most 13.5 req/s"),
    (keys(profile="llama", target_rps="1e3"), "target-rps", "1e3", "reaches at most"),
    (keys(profile="llama", target_rps="8", memory="16Gi"), "memory", "16Gi", "below profile llama's minimum"),
    (keys(profile="llama"), "compute", None, "missing"),
]


@pytest.mark.parametrize(("annotations", "key", "value", "reason"), BAD,
                         ids=[f"{k}={v}:{r}" for _, k, v, r in BAD])
@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_malformed_values_name_key_value_and_reason(annotations: dict[str, str], key: str, value: object,
                                                    reason: str, where: str) -> None:
    with pytest.raises(SliceRequestError) as err:
        parse(**{where: annotations})
    assert err.value.key == f"{P}/{key}"
    assert err.value.value == value
    assert reason in err.value.reason
    assert f"{P}/{key}" in str(err.value)


def test_a_bad_label_is_not_hidden_by_a_good_annotation_of_another_key() -> None:
    with pytest.raises(SliceRequestError) as err:
        parse(annotations=keys(compute="100m", memory="1Gi"), labels=keys(count="zero"))
    assert (err.value.key, err.value.value) == (f"{P}/count", "zero")


def test_a_good_annotation_overrides_a_bad_label_of_the_same_key() -> None:
    req = parse(annotations=keys(compute="100m", memory="1Gi"), labels=keys(compute="nonsense"))
    assert req.compute_millis == 100


@pytest.mark.parametrize(("typo", "meant"), [("memoryLimt", "memoryLimit"), ("Compute", "compute"),
                                             ("computelimit", "computeLimit"), ("target_rps", "target-rps"),
                                             ("clas", "class"), ("profil", "profile"),
                                             # transpositions: the typos people make (issue 15)
                                             ("memroy", "memory"), ("coutn", "count"), ("cpmute", "compute")])
def test_misspelt_keys_are_rejected_not_ignored(typo: str, meant: str) -> None:
    with pytest.raises(SliceRequestError) as err:
        parse({f"{P}/compute": "100m", f"{P}/memory": "1Gi", f"{P}/{typo}": "x"})
    assert (err.value.key, err.value.value) == (f"{P}/{typo}", "x")
    assert f"did you mean {P}/{meant}?" in err.value.reason
    with pytest.raises(SliceRequestError):  # even when it is the pod's only gpuslice key
        parse(labels={f"{P}/{typo}": "x"})


@pytest.mark.parametrize("other", ["assignment", "inventory", "allocated", "pod", "gpu-share", "sim-model"])
def test_other_keys_under_the_prefix_are_not_requests(other: str) -> None:
    assert parse({f"{P}/{other}": "x"}) is None
    assert parse({f"{P}/{other}": "x", f"{P}/compute": "1", f"{P}/memory": "1Gi"}).compute_millis == 1000


def test_non_string_values_are_rejected() -> None:
    with pytest.raises(SliceRequestError) as err:
        parse({f"{P}/compute": 0.5, f"{P}/memory": "1Gi"})  # type: ignore[dict-item]
    assert (err.value.key, err.value.value) == (f"{P}/compute", 0.5)
    assert "string" in err.value.reason
