"""Node inventory: the agent's annotation (every malformed case) and the node-labeller fallback."""

from __future__ import annotations

import json

import pytest

from extender.core.errors import InventoryError
from extender.core.inventory import (
    INVENTORY_ANNOTATION,
    LABEL_CU_COUNT,
    LABEL_PRODUCT,
    LABEL_VRAM,
    RESOURCE_AMD_GPU,
    GpuInfo,
    format_inventory,
    inventory_for_node,
    parse_inventory,
)
from extender.core.policy import parse_policy

POLICY = parse_policy({})
GI = 2**30
DESIGN_EXAMPLE = ('[{"index":0,"id":"0x2c1d5a6b7e8f","model":"MI300X","computeUnits":304,"xcds":8,'
                  '"shaderEngines":32,"memoryBytes":206141652992,"healthy":true,"numaNode":0}]')


def gpu(**over: object) -> dict[str, object]:
    base = {"index": 0, "id": "0xa", "model": "MI300X", "computeUnits": 304, "xcds": 8, "shaderEngines": 32,
            "memoryBytes": 192 * GI, "healthy": True}
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def test_the_design_example() -> None:
    (g,) = parse_inventory(DESIGN_EXAMPLE)
    assert g == GpuInfo(index=0, id="0x2c1d5a6b7e8f", model="MI300X", computeUnits=304, xcds=8, shaderEngines=32,
                        memoryBytes=206141652992, healthy=True, numaNode=0)


def test_optional_keys_and_round_trip() -> None:
    gpus = [gpu(index=1, id="0xb", numaNode=1, hiveId="0x99", renderMinor=129, partition="SPX/NPS1", healthy=False),
            gpu()]
    parsed = parse_inventory(json.dumps(gpus))
    assert [g.index for g in parsed] == [0, 1]  # sorted by index
    assert parsed[1].hiveId == "0x99" and parsed[1].renderMinor == 129 and parsed[1].partition == "SPX/NPS1"
    assert not parsed[1].healthy and parsed[0].numaNode is None
    assert parse_inventory(format_inventory(parsed)) == parsed
    assert "numaNode" not in json.loads(format_inventory(parsed))[0]  # absent optionals stay absent


def test_an_empty_list_is_a_node_without_gpus() -> None:
    assert parse_inventory("[]") == []


A = INVENTORY_ANNOTATION
BAD = [
    ("{not json", A, "not JSON"),
    ('{"index": 0}', A, "JSON list"),
    ('"gpus"', A, "JSON list"),
    (json.dumps([5]), f"{A}[0]", "JSON object"),
    (json.dumps([gpu(), gpu(index=1, id=DROP)]), f"{A}[1].id", "missing"),
    *[(json.dumps([gpu(**{k: DROP})]), f"{A}[0].{k}", "missing")
      for k in ("index", "id", "model", "computeUnits", "xcds", "shaderEngines", "memoryBytes", "healthy")],
    (json.dumps([gpu(index="0")]), f"{A}[0].index", "integer"),
    (json.dumps([gpu(index=-1)]), f"{A}[0].index", "negative"),
    (json.dumps([gpu(index=True)]), f"{A}[0].index", "integer"),
    (json.dumps([gpu(computeUnits=304.0)]), f"{A}[0].computeUnits", "integer"),
    (json.dumps([gpu(computeUnits=0)]), f"{A}[0].computeUnits", "greater than 0"),
    (json.dumps([gpu(xcds=0)]), f"{A}[0].xcds", "greater than 0"),
    (json.dumps([gpu(shaderEngines=-4)]), f"{A}[0].shaderEngines", "greater than 0"),
    (json.dumps([gpu(memoryBytes=0)]), f"{A}[0].memoryBytes", "greater than 0"),
    (json.dumps([gpu(memoryBytes="192Gi")]), f"{A}[0].memoryBytes", "integer"),
    (json.dumps([gpu(id=42)]), f"{A}[0].id", "str"),
    (json.dumps([gpu(model=None)]), f"{A}[0].model", "missing"),
    (json.dumps([gpu(healthy="yes")]), f"{A}[0].healthy", "bool"),
    (json.dumps([gpu(healthy=1)]), f"{A}[0].healthy", "bool"),
    (json.dumps([gpu(numaNode="0")]), f"{A}[0].numaNode", "integer"),
    (json.dumps([gpu(hiveId=7)]), f"{A}[0].hiveId", "str"),
    (json.dumps([gpu(renderMinor=128.5)]), f"{A}[0].renderMinor", "integer"),
    (json.dumps([gpu(partition=["SPX"])]), f"{A}[0].partition", "str"),
    (json.dumps([gpu(), gpu(id="0xb")]), A, "indices repeat"),
    (json.dumps([gpu(), gpu(index=1)]), A, "ids repeat"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD, ids=[f"{k}:{r}:{i}" for i, (_, k, r) in enumerate(BAD)])
def test_malformed_annotations_name_the_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(InventoryError) as err:
        inventory_for_node("n", {}, {INVENTORY_ANNOTATION: text}, {RESOURCE_AMD_GPU: "8"}, POLICY)
    assert err.value.key == key
    assert reason in err.value.reason


def test_the_annotation_wins_over_labels() -> None:
    gpus = inventory_for_node("n", {LABEL_CU_COUNT: "80"}, {INVENTORY_ANNOTATION: DESIGN_EXAMPLE},
                              {RESOURCE_AMD_GPU: "8"}, POLICY)
    assert len(gpus) == 1 and gpus[0].computeUnits == 304


# --- node-labeller fallback ----------------------------------------------------------------------

def test_label_fallback_uses_labels_and_the_amd_gpu_capacity() -> None:
    labels = {LABEL_PRODUCT: "AMD_Instinct_MI300X_OAM", LABEL_CU_COUNT: "304", LABEL_VRAM: "192G"}
    gpus = inventory_for_node("node-a", labels, {}, {RESOURCE_AMD_GPU: "8", "cpu": "96"}, POLICY)
    assert [g.index for g in gpus] == list(range(8))
    assert len({g.id for g in gpus}) == 8 and gpus[3].id == "node-a/gpu3"
    g = gpus[0]
    assert (g.model, g.computeUnits, g.xcds, g.shaderEngines, g.memoryBytes, g.healthy) == (
        "MI300X", 304, 8, 32, 192 * 10**9, True)


def test_label_fallback_defaults_from_the_model_table() -> None:
    (g,) = inventory_for_node("n", {LABEL_PRODUCT: "AMD Instinct MI250X"}, None, {RESOURCE_AMD_GPU: "1"}, POLICY)
    assert (g.model, g.computeUnits, g.xcds, g.memoryBytes) == ("MI250X", 110, 1, 64 * GI)


@pytest.mark.parametrize(("product", "model"), [
    ("AMD_Instinct_MI325X_OAM", "MI325X"), ("mi300x", "MI300X"), ("AMD_Instinct_MI300A", "MI250X"),
    ("", "MI250X"), ("Radeon_PRO_W7900", "MI250X"), ("MI300XL", "MI250X"), ("XMI325X", "MI250X"),
])
def test_product_name_matches_a_whole_model_name_else_the_default(product: str, model: str) -> None:
    pol = parse_policy({"defaultModel": "MI250X"})
    (g,) = inventory_for_node("n", {LABEL_PRODUCT: product}, {}, {RESOURCE_AMD_GPU: "1"}, pol)
    assert g.model == model


def test_label_cu_count_overrides_the_model() -> None:
    (g,) = inventory_for_node("n", {LABEL_CU_COUNT: "228", LABEL_VRAM: "128Gi"}, {}, {RESOURCE_AMD_GPU: "1"},
                              POLICY)
    assert (g.computeUnits, g.memoryBytes, g.model) == (228, 128 * GI, "MI300X")


@pytest.mark.parametrize("resources", [{}, {"cpu": "4"}, {RESOURCE_AMD_GPU: "0"}])
def test_no_amd_gpus_means_no_inventory(resources: dict[str, str]) -> None:
    assert inventory_for_node("n", {LABEL_CU_COUNT: "304"}, {}, resources, POLICY) == []
    assert inventory_for_node("n", None, None, None, POLICY) == []


@pytest.mark.parametrize(("labels", "resources", "key", "value", "reason"), [
    ({}, {RESOURCE_AMD_GPU: "lots"}, RESOURCE_AMD_GPU, "lots", "not a Kubernetes quantity"),
    ({}, {RESOURCE_AMD_GPU: "-1"}, RESOURCE_AMD_GPU, "-1", "whole, non-negative"),
    ({}, {RESOURCE_AMD_GPU: "1.5"}, RESOURCE_AMD_GPU, "1.5", "whole, non-negative"),
    ({LABEL_CU_COUNT: "many"}, {RESOURCE_AMD_GPU: "1"}, LABEL_CU_COUNT, "many", "integer"),
    ({LABEL_CU_COUNT: "0"}, {RESOURCE_AMD_GPU: "1"}, LABEL_CU_COUNT, "0", "greater than 0"),
    ({LABEL_CU_COUNT: "-8"}, {RESOURCE_AMD_GPU: "1"}, LABEL_CU_COUNT, "-8", "greater than 0"),
    ({LABEL_VRAM: "big"}, {RESOURCE_AMD_GPU: "1"}, LABEL_VRAM, "big", "not a Kubernetes quantity"),
    ({LABEL_VRAM: "-192G"}, {RESOURCE_AMD_GPU: "1"}, LABEL_VRAM, "-192G", "negative"),
    ({LABEL_VRAM: "0"}, {RESOURCE_AMD_GPU: "1"}, LABEL_VRAM, "0", "greater than 0"),
])
def test_malformed_labels_name_the_key(labels: dict[str, str], resources: dict[str, str], key: str, value: str,
                                       reason: str) -> None:
    with pytest.raises(InventoryError) as err:
        inventory_for_node("n", labels, {}, resources, POLICY)
    assert (err.value.key, err.value.value) == (key, value)
    assert reason in err.value.reason
