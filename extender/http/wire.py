"""The kube-scheduler extender v1 wire format (`k8s.io/kube-scheduler/extender/v1`).

Those Go structs carry no JSON tags, so the keys are the capitalised Go field names. Pods and Nodes
inside them are ordinary v1 objects (lower-case keys). Only the fields gpuslice reads are modelled;
everything else is ignored on the way in, and Node objects are echoed back exactly as received.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from extender.core.bounds import MAX_ANNOTATION_BYTES, MAX_NAME_CHARS, MAX_NODES, OutOfBounds
from extender.core.errors import InputError
from extender.core.quantity import parse_bytes, parse_quantity
from extender.engine.cluster import NodeView, PodView
from extender.engine.dra_requests import claim_names
from extender.engine.scheduler import FilterResult


class WireError(InputError):
    """A request body that is not a valid extender message (HTTP 400)."""


class _In(BaseModel):
    # Kubernetes objects carry many fields gpuslice does not read: ignore them, never reject them.
    model_config = ConfigDict(extra="ignore", frozen=True)


Quantity = str | int | float
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Int32 = Annotated[int, Field(ge=-(2**31), lt=2**31)]


def _bounded_text(values: dict[str, str] | None, what: str) -> dict[str, str] | None:
    """Labels or annotations: Kubernetes caps an object's at 256 KiB in all; so does gpuslice."""
    if values is not None and sum(len(k) + len(v) for k, v in values.items()) > MAX_ANNOTATION_BYTES:
        raise ValueError(str(OutOfBounds(f"{what} total more than {MAX_ANNOTATION_BYTES} characters")))
    return values


class ObjectMeta(_In):
    name: Name
    namespace: str = Field(default="default", max_length=MAX_NAME_CHARS)
    uid: str = Field(default="", max_length=MAX_NAME_CHARS)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    resourceVersion: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    deletionTimestamp: str | None = None

    @field_validator("labels", "annotations")
    @classmethod
    def _bounded(cls, values: dict[str, str] | None, info: Any) -> dict[str, str] | None:
        return _bounded_text(values, info.field_name)


class ResourceRequirements(_In):
    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class Container(_In):
    name: str = ""
    resources: ResourceRequirements | None = None


MAX_POD_CLAIMS = 32  # the API server's limit on a pod's spec.resourceClaims


class PodResourceClaim(_In):
    name: str = ""
    resourceClaimName: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    resourceClaimTemplateName: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class PodResourceClaimStatus(_In):
    name: str = ""
    resourceClaimName: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class PodSpec(_In):
    containers: list[Container] = Field(default_factory=list)
    resourceClaims: list[PodResourceClaim] | None = Field(default=None, max_length=MAX_POD_CLAIMS)
    initContainers: list[Container] | None = None
    nodeName: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    priority: Int32 | None = None
    schedulerName: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class PodStatus(_In):
    phase: str | None = None
    resourceClaimStatuses: list[PodResourceClaimStatus] | None = Field(default=None, max_length=MAX_POD_CLAIMS)


class Pod(_In):
    metadata: ObjectMeta
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()

    @field_validator("metadata")
    @classmethod
    def _has_uid(cls, meta: ObjectMeta) -> ObjectMeta:
        if not meta.uid:
            raise ValueError("a pod needs metadata.uid")
        return meta


class NodeSpec(_In):
    unschedulable: bool = False


class NodeStatus(_In):
    capacity: dict[str, Quantity] | None = None
    allocatable: dict[str, Quantity] | None = None


class Node(_In):
    metadata: ObjectMeta
    spec: NodeSpec = NodeSpec()
    status: NodeStatus = NodeStatus()


class NodeList(_In):
    items: list[Node] = Field(default_factory=list, max_length=MAX_NODES)


class ExtenderArgs(_In):
    """POST /filter and /prioritize. `Nodes` when nodeCacheCapable is false, else `NodeNames`."""

    Pod: Pod
    Nodes: NodeList | None = None
    NodeNames: list[Name] | None = Field(default=None, max_length=MAX_NODES)


class ExtenderBindingArgs(_In):
    PodName: Name
    PodNamespace: Name
    PodUID: Name
    Node: Name


class MetaPod(_In):
    UID: str = Field(max_length=MAX_NAME_CHARS)


class MetaVictims(_In):
    Pods: list[MetaPod] = Field(default_factory=list)
    NumPDBViolations: Int32 = 0


class Victims(_In):
    Pods: list[Pod] = Field(default_factory=list)
    NumPDBViolations: Int32 = 0


class ExtenderPreemptionArgs(_In):
    Pod: Pod
    NodeNameToVictims: dict[Name, Victims] | None = Field(default=None, max_length=MAX_NODES)
    NodeNameToMetaVictims: dict[Name, MetaVictims] | None = Field(default=None, max_length=MAX_NODES)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ExtenderFilterResult(_Out):
    Nodes: dict[str, Any] | None = None  # a v1 NodeList of the Node objects exactly as received
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = Field(default_factory=dict)
    FailedAndUnresolvableNodes: dict[str, str] = Field(default_factory=dict)
    Error: str = ""


class HostPriority(_Out):
    Host: str
    Score: int = Field(ge=0, le=10)


class ExtenderBindingResult(_Out):
    Error: str = ""


class ExtenderPreemptionResult(_Out):
    NodeNameToMetaVictims: dict[str, MetaVictims] = Field(default_factory=dict)


# --- parsing ---------------------------------------------------------------------------------


class ParsedArgs:
    """A validated ExtenderArgs, converted to engine views. `raw_nodes` keeps the request's own Node
    objects (by name) so the filter reply can echo them untouched."""

    __slots__ = ("pod", "nodes", "names", "raw_nodes")

    def __init__(self, pod: PodView, nodes: list[NodeView] | None, names: list[str] | None,
                 raw_nodes: dict[str, Any]) -> None:
        self.pod = pod
        self.nodes = nodes
        self.names = names
        self.raw_nodes = raw_nodes

    @property
    def node_names_form(self) -> bool:
        return self.nodes is None


_BOUNDS = frozenset({"string_too_long", "too_long", "less_than", "less_than_equal", "greater_than",
                     "greater_than_equal"})


def _first_error(exc: ValidationError, what: str) -> WireError:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or what
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in _BOUNDS:
        msg = str(OutOfBounds(msg))
    return WireError(where, err.get("input"), msg)


def _validate(model: type[BaseModel], data: object, what: str) -> Any:
    if not isinstance(data, dict):
        raise WireError(what, type(data).__name__, f"the body must be a JSON object ({what})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, what) from None


def parse_extender_args(data: object) -> ParsedArgs:
    args: ExtenderArgs = _validate(ExtenderArgs, data, "ExtenderArgs")
    if args.Nodes is None and args.NodeNames is None:
        raise WireError("Nodes/NodeNames", None, "one of Nodes (a NodeList) or NodeNames (a list) is required")
    if args.Nodes is not None and args.NodeNames is not None:
        raise WireError("Nodes/NodeNames", "both", "give Nodes (nodeCacheCapable false) or NodeNames, not both")
    pod = pod_view(args.Pod)
    if args.Nodes is None:
        return ParsedArgs(pod, None, list(args.NodeNames or ()), {})
    raw_items = data["Nodes"].get("items") or []  # type: ignore[index]
    views = [node_view(n) for n in args.Nodes.items]
    return ParsedArgs(pod, views, None, {v.name: raw for v, raw in zip(views, raw_items, strict=True)})


def parse_binding_args(data: object) -> ExtenderBindingArgs:
    return _validate(ExtenderBindingArgs, data, "ExtenderBindingArgs")


class ParsedPreemption:
    """ExtenderPreemptionArgs in either form, as node -> (victim UIDs, PDB violations)."""

    __slots__ = ("pod", "victims")

    def __init__(self, pod: PodView, victims: dict[str, tuple[list[str], int]]) -> None:
        self.pod = pod
        self.victims = victims


def parse_preemption_args(data: object) -> ParsedPreemption:
    args: ExtenderPreemptionArgs = _validate(ExtenderPreemptionArgs, data, "ExtenderPreemptionArgs")
    victims: dict[str, tuple[list[str], int]] = {}
    if args.NodeNameToMetaVictims is not None:
        for node, meta in args.NodeNameToMetaVictims.items():
            victims[node] = ([p.UID for p in meta.Pods], meta.NumPDBViolations)
    elif args.NodeNameToVictims is not None:
        for node, full in args.NodeNameToVictims.items():
            victims[node] = ([p.metadata.uid for p in full.Pods], full.NumPDBViolations)
    else:
        raise WireError("NodeNameToVictims/NodeNameToMetaVictims", None, "one of them is required")
    return ParsedPreemption(pod_view(args.Pod), victims)


# --- conversion to engine views --------------------------------------------------------------


def _quantity(where: str, value: Quantity, parse: Any) -> Any:
    try:
        return parse(str(value))
    except ValueError as exc:
        raise WireError(where, value, str(exc)) from None


def _requests(c: Container, where: str) -> tuple[int, int]:
    req = (c.resources.requests if c.resources else None) or {}
    cpu = req.get("cpu")
    mem = req.get("memory")
    millis = int(_quantity(f"{where}.cpu", cpu, parse_quantity) * 1000) if cpu is not None else 0
    memory = _quantity(f"{where}.memory", mem, parse_bytes) if mem is not None else 0
    return millis, memory


def pod_view(pod: Pod) -> PodView:
    """The engine's view of a v1 Pod. CPU and memory requests follow Kubernetes' effective-request
    rule: the sum over containers, or the largest init container if that is more."""
    meta = pod.metadata
    cpu = memory = 0
    for i, c in enumerate(pod.spec.containers):
        m, b = _requests(c, f"Pod.spec.containers[{i}].resources.requests")
        cpu, memory = cpu + m, memory + b
    for i, c in enumerate(pod.spec.initContainers or ()):
        m, b = _requests(c, f"Pod.spec.initContainers[{i}].resources.requests")
        cpu, memory = max(cpu, m), max(memory, b)
    return PodView(uid=meta.uid, namespace=meta.namespace, name=meta.name, labels=meta.labels or {},
                   annotations=meta.annotations or {}, node_name=pod.spec.nodeName or None,
                   phase=pod.status.phase or "Pending", deleting=meta.deletionTimestamp is not None,
                   resource_version=meta.resourceVersion, cpu_millis=cpu, memory_bytes=memory,
                   priority=pod.spec.priority or 0, scheduler_name=pod.spec.schedulerName or None,
                   claims=claim_names([c.model_dump() for c in pod.spec.resourceClaims or ()],
                                      [s.model_dump() for s in pod.status.resourceClaimStatuses or ()]))


def node_view(node: Node) -> NodeView:
    """The engine's view of a v1 Node; allocatable falls back to capacity."""
    resources = node.status.allocatable or node.status.capacity or {}
    return NodeView(name=node.metadata.name, labels=node.metadata.labels or {},
                    annotations=node.metadata.annotations or {},
                    allocatable={k: str(v) for k, v in resources.items()},
                    unschedulable=node.spec.unschedulable, resource_version=node.metadata.resourceVersion)


# --- replies -----------------------------------------------------------------------------------


def filter_reply(args: ParsedArgs, result: FilterResult) -> dict[str, Any]:
    """ExtenderFilterResult in the request's own form: `NodeNames`, or `Nodes` with the passing Node
    objects exactly as received. An engine error is the whole reply (kube-scheduler then retries)."""
    if result.error:
        return {"Error": result.error}
    out: dict[str, Any] = {}
    if args.node_names_form:
        out["NodeNames"] = list(result.passed)
    else:
        out["Nodes"] = {"metadata": {}, "items": [args.raw_nodes[n] for n in result.passed]}
    out["FailedNodes"] = dict(result.failed)
    out["FailedAndUnresolvableNodes"] = dict(result.unresolvable)
    out["Error"] = ""
    return out  # shaped as ExtenderFilterResult; built directly since Nodes may hold thousands of objects


def error_filter_reply(message: str) -> dict[str, Any]:
    return {"Error": message}


def priority_reply(scores: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """HostPriorityList, scores clamped to 0..10 (the engine's already are: the test is cheaper than the clamp)."""
    return [{"Host": host, "Score": score if type(score) is int and 0 <= score <= 10 else max(0, min(10, int(score)))}
            for host, score in scores]


def preemption_reply(args: ParsedPreemption, kept: dict[str, list[str]]) -> dict[str, Any]:
    """Always the meta form (kube-scheduler reads NodeNameToMetaVictims whichever form it sent)."""
    return {"NodeNameToMetaVictims": {
        node: {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": args.victims[node][1]}
        for node, uids in kept.items()}}


def binding_reply(error: str) -> dict[str, Any]:
    return ExtenderBindingResult(Error=error).model_dump()
