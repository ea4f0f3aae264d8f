"""A node's GPUs: from the agent's `gpuslice.io/inventory` annotation, else AMD node-labeller labels."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from extender.core.bounds import (
    MAX_ANNOTATION_BYTES,
    MAX_BYTES,
    MAX_CUS,
    MAX_GPU_INDEX,
    MAX_GPUS,
    MAX_NAME_CHARS,
    OutOfBounds,
)
from extender.core.errors import InventoryError
from extender.core.interning import shared_int, shared_str
from extender.core.policy import Policy
from extender.core.quantity import parse_bytes, parse_quantity

INVENTORY_ANNOTATION = "gpuslice.io/inventory"
LABEL_CU_COUNT = "amd.com/gpu.cu-count"
LABEL_VRAM = "amd.com/gpu.vram"
LABEL_PRODUCT = "amd.com/gpu.product-name"
RESOURCE_AMD_GPU = "amd.com/gpu"


@dataclass(frozen=True, slots=True)  # 40,000 at 5,000 nodes: no __dict__ each
class GpuInfo:
    index: int
    id: str
    model: str
    computeUnits: int
    xcds: int
    shaderEngines: int
    memoryBytes: int
    healthy: bool
    numaNode: int | None = None
    hiveId: str | None = None
    renderMinor: int | None = None
    partition: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


_REQUIRED: dict[str, type] = {"index": int, "id": str, "model": str, "computeUnits": int, "xcds": int,
                              "shaderEngines": int, "memoryBytes": int, "healthy": bool}
_OPTIONAL: dict[str, type] = {"numaNode": int, "hiveId": str, "renderMinor": int, "partition": str}
# Upper bounds of the numeric fields (strings are bounded by MAX_NAME_CHARS).
_MAXIMA: dict[str, int] = {"index": MAX_GPU_INDEX, "computeUnits": MAX_CUS, "xcds": 64, "shaderEngines": MAX_CUS,
                           "memoryBytes": MAX_BYTES, "numaNode": 4096, "renderMinor": 2**20}


def device_name(info: GpuInfo) -> str:
    """The GPU's DRA device name (agent/dra/slices.py publishes it, kube/claims.py reads allocations by
    it): a DNS label that stays with the GPU across reboots and re-enumeration (its KFD unique_id)."""
    return "gpu-" + (info.id[2:] if info.id.startswith("0x") else info.id).lower()


def _refuse(key: str, value: object, what: str) -> InventoryError:
    return InventoryError(key, value, str(OutOfBounds(what)))


def _gpu_from_dict(obj: object, where: str) -> GpuInfo:
    if not isinstance(obj, dict):
        raise InventoryError(where, obj, "each GPU is a JSON object")
    fields: dict[str, object] = {}
    for name, typ in {**_REQUIRED, **_OPTIONAL}.items():
        value = obj.get(name)
        if value is None:
            if name in _REQUIRED:
                raise InventoryError(f"{where}.{name}", None, "required key is missing")
            continue
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InventoryError(f"{where}.{name}", value, "must be an integer")
        if typ is not int and not isinstance(value, typ):
            raise InventoryError(f"{where}.{name}", value, f"must be a {typ.__name__}")
        if typ is int and value > _MAXIMA.get(name, MAX_BYTES):  # type: ignore[operator]
            raise _refuse(f"{where}.{name}", value, f"more than {_MAXIMA.get(name, MAX_BYTES)}")
        if typ is str and len(value) > MAX_NAME_CHARS:  # type: ignore[arg-type]
            raise _refuse(f"{where}.{name}", value, f"longer than {MAX_NAME_CHARS} characters")
        # Kept for every GPU; models, hives, partitions and sizes repeat across GPUs (ids do not): one object each.
        if typ is str and name != "id":
            value = shared_str(value)  # type: ignore[arg-type]
        elif typ is int:
            value = shared_int(value)  # type: ignore[arg-type]
        fields[name] = value
    for name in ("computeUnits", "xcds", "shaderEngines", "memoryBytes"):
        if fields[name] <= 0:  # type: ignore[operator]
            raise InventoryError(f"{where}.{name}", fields[name], "must be greater than 0")
    if fields["index"] < 0:  # type: ignore[operator]
        raise InventoryError(f"{where}.index", fields["index"], "must not be negative")
    return GpuInfo(**fields)  # type: ignore[arg-type]


def parse_inventory(text: str) -> list[GpuInfo]:
    """Parse the inventory annotation (a JSON list, one object per GPU)."""
    if isinstance(text, str) and len(text) > MAX_ANNOTATION_BYTES:
        raise _refuse(INVENTORY_ANNOTATION, text, f"longer than {MAX_ANNOTATION_BYTES} characters")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError, ValueError) as exc:
        raise InventoryError(INVENTORY_ANNOTATION, text, f"not JSON: {exc}") from None
    if not isinstance(data, list):
        raise InventoryError(INVENTORY_ANNOTATION, text, "must be a JSON list of GPUs")
    if len(data) > MAX_GPUS:
        raise _refuse(INVENTORY_ANNOTATION, len(data), f"more than {MAX_GPUS} GPUs")
    gpus = [_gpu_from_dict(obj, f"{INVENTORY_ANNOTATION}[{i}]") for i, obj in enumerate(data)]
    indices = [g.index for g in gpus]
    if len(set(indices)) != len(indices):
        raise InventoryError(INVENTORY_ANNOTATION, indices, "GPU indices repeat")
    ids = [g.id for g in gpus]
    if len(set(ids)) != len(ids):
        raise InventoryError(INVENTORY_ANNOTATION, ids, "GPU ids repeat")
    return sorted(gpus, key=lambda g: g.index)


def format_inventory(gpus: list[GpuInfo]) -> str:
    return json.dumps([g.to_dict() for g in gpus], separators=(",", ":"))


def _model_from_product(product: str | None, policy: Policy) -> str:
    if not product:
        return policy.defaultModel
    # node-labeller writes e.g. "AMD_Instinct_MI300X_OAM"; match the longest known model name in it.
    for name in sorted(policy.models, key=len, reverse=True):
        if re.search(rf"(^|[^A-Za-z0-9]){re.escape(name)}([^A-Za-z0-9]|$)", product, re.IGNORECASE):
            return name
    return policy.defaultModel


def inventory_from_labels(labels: Mapping[str, str], resources: Mapping[str, str], node: str,
                          policy: Policy) -> list[GpuInfo]:
    """Fallback inventory from AMD node-labeller labels and the `amd.com/gpu` capacity."""
    count_text = resources.get(RESOURCE_AMD_GPU)
    if count_text is None:
        return []
    try:
        count_q = parse_quantity(count_text)
    except ValueError as exc:
        raise InventoryError(RESOURCE_AMD_GPU, count_text, str(exc)) from None
    if count_q < 0 or count_q != count_q.to_integral_value():
        raise InventoryError(RESOURCE_AMD_GPU, count_text, "must be a whole, non-negative GPU count")
    if count_q > MAX_GPUS:
        raise _refuse(RESOURCE_AMD_GPU, count_text, f"more than {MAX_GPUS} GPUs")
    model_name = _model_from_product(labels.get(LABEL_PRODUCT), policy)
    model = policy.models[model_name]
    cus = model.computeUnits
    if LABEL_CU_COUNT in labels:
        text = labels[LABEL_CU_COUNT]
        if len(text) > 12:  # before int(): a label of 5,000 digits costs real time to convert
            raise _refuse(LABEL_CU_COUNT, text, f"more than {MAX_CUS} CUs")
        try:
            cus = int(text)
        except ValueError:
            raise InventoryError(LABEL_CU_COUNT, text, "must be an integer") from None
        if cus > MAX_CUS:
            raise _refuse(LABEL_CU_COUNT, text, f"more than {MAX_CUS} CUs")
        if cus <= 0:
            raise InventoryError(LABEL_CU_COUNT, labels[LABEL_CU_COUNT], "must be greater than 0")
    memory = model.memory
    if LABEL_VRAM in labels:
        try:
            memory = parse_bytes(labels[LABEL_VRAM])
        except ValueError as exc:
            raise InventoryError(LABEL_VRAM, labels[LABEL_VRAM], str(exc)) from None
        if memory <= 0:
            raise InventoryError(LABEL_VRAM, labels[LABEL_VRAM], "must be greater than 0")
    return [GpuInfo(index=i, id=f"{node}/gpu{i}", model=model_name, computeUnits=cus, xcds=model.xcds,
                    shaderEngines=model.shaderEngines, memoryBytes=memory, healthy=True)
            for i in range(int(count_q))]


def inventory_for_node(name: str, labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None,
                       resources: Mapping[str, str] | None, policy: Policy) -> list[GpuInfo]:
    """The node's GPUs. `resources` is the node's allocatable (or capacity) map.

    Raises InventoryError (the node is then skipped with that reason) for malformed input.
    """
    annotations = annotations or {}
    if INVENTORY_ANNOTATION in annotations:
        return parse_inventory(annotations[INVENTORY_ANNOTATION])
    return inventory_from_labels(labels or {}, resources or {}, name, policy)
