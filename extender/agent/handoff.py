"""The hand-off: each starting container gets the slice of its own pod, found from kubelet's own
record of the allocation, never guessed.

kubelet's device manager (pkg/kubelet/cm/devicemanager/manager.go) drives it:

1. At admission kubelet calls Allocate(ids) for each container that requests gpu-share. The agent
   answers with nothing pod-specific, only the CDI device `gpuslice.io/slice=<name>`, the name a
   hash of the ids (`cdi_device`). kubelet stores the answer with the pod and container
   (podDevices, checkpointed) right after Allocate returns.
2. The plugin registers with PreStartRequired, so before it creates each of those containers
   kubelet calls PreStartContainer(ids), after the allocation is recorded.
3. PreStartContainer asks kubelet's PodResources API which containers hold exactly these ids.
   kubelet hands a device to one active pod at a time, so that is one pod (several of its
   containers may share the ids, e.g. an init container's devices reused by the app container).
   The agent reads that pod from the API server, checks it (assignment on this node, GPUs present
   and healthy, every CU set XCC-complete, the container's share count) and writes the CDI spec.
4. The runtime resolves `gpuslice.io/slice=<name>` from the spec files at CreateContainer, which
   kubelet issues after PreStartContainer returned.

Anything that cannot be checked fails PreStartContainer: the container does not start, the pod gets
an Event where there is a pod to put it on, and gpuslice_agent_handoffs_total counts the reason.
kubelet retries the start (and PreStartContainer) with back-off, so a pod the API server has not
shown yet starts on a later attempt. A spec whose ids no container holds any more is removed
(`sweep`); Allocate also removes a spec left under the same name, so a new holder of reused ids
never finds the previous pod's edits.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from extender.agent.allocation import ContainerAllocation, allocation_for
from extender.agent.cdi import DEFAULT_SPEC_DIR, ContainerEdits, DeviceNode, Kind, remove_spec, spec_devices, write_spec
from extender.agent.metrics import AgentMetrics
from extender.agent.podresources import DeviceHolders
from extender.agent.pods import RESOURCE, ClusterActions, PodInfo, PodSource
from extender.agent.topology import Topology
from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, parse_assignment
from extender.core.atoms import AtomError
from extender.core.errors import GpusliceError, InputError

log = logging.getLogger(__name__)

CDI_KIND = Kind("gpuslice.io", "slice")
EVENT_REASON = "GpusliceHandOffRefused"


class HandOffError(GpusliceError):
    """PreStartContainer refuses: `reason` is a short label (the metric's), `pod` the pod when known."""

    def __init__(self, reason: str, message: str, pod: PodInfo | None = None) -> None:
        self.reason = reason
        self.pod = pod
        super().__init__(message)


@dataclass(frozen=True)
class Claim:
    pod: PodInfo
    containers: tuple[str, ...]
    assignment: Assignment
    allocation: ContainerAllocation
    device_ids: frozenset[str]
    cdi_device: str


def cdi_device(device_ids: Iterable[str]) -> str:
    """The CDI device name of one allocation: derived from its ids alone, so PreStartContainer finds
    the name Allocate gave without any state."""
    return hashlib.sha256("\n".join(sorted(device_ids)).encode()).hexdigest()[:24]


def container_edits(allocation: ContainerAllocation) -> ContainerEdits:
    return ContainerEdits(env=dict(allocation.envs), device_nodes=tuple(DeviceNode(p) for p in allocation.devices))


class HandOff:
    def __init__(self, node: str, pods: PodSource, holders: DeviceHolders, topology: Callable[[], Topology],
                 cdi_dir: str | Path = DEFAULT_SPEC_DIR, actions: ClusterActions | None = None,
                 metrics: AgentMetrics | None = None, resource: str = RESOURCE) -> None:
        self.node = node
        self.pods = pods
        self.holders = holders
        self.topology = topology
        self.cdi_dir = Path(cdi_dir)
        self.actions = actions
        self.metrics = metrics
        self.resource = resource
        self._lock = threading.Lock()  # spec writes vs. the sweep's list-then-remove
        self._claims: dict[str, Claim] = {}  # CDI device name -> claim

    def claims(self) -> list[Claim]:
        with self._lock:
            return list(self._claims.values())

    def allocate(self, device_ids: Iterable[str]) -> str:
        """Allocate's answer: the qualified CDI device name. A spec left under that name (ids a gone
        pod held) is removed now, long before the new holder's PreStartContainer writes its own."""
        name = cdi_device(device_ids)
        with self._lock:
            if remove_spec(self.cdi_dir, CDI_KIND, name):
                log.info("Allocate %s: removed the previous holder's CDI spec %s", sorted(device_ids), name)
            self._claims.pop(name, None)
        return CDI_KIND.qualified(name)

    def prestart(self, device_ids: Iterable[str]) -> Claim:
        """Find the pod holding exactly `device_ids`, check its slice and write its CDI spec.
        Raises HandOffError (after the Event and the metric) when it cannot."""
        ids = frozenset(device_ids)
        try:
            claim = self._claim(ids)
            with self._lock:
                write_spec(self.cdi_dir, CDI_KIND, claim.cdi_device, container_edits(claim.allocation))
                self._claims[claim.cdi_device] = claim
        except HandOffError as exc:
            self._refused(exc)
            raise
        except OSError as exc:
            err = HandOffError("cdi-write", f"cannot write the CDI spec in {self.cdi_dir}: {exc}")
            self._refused(err)
            raise err from None
        self._count("ok")
        log.info("PreStartContainer %s -> pod %s %s: CDI device %s", sorted(ids), claim.pod.key,
                 list(claim.containers), CDI_KIND.qualified(claim.cdi_device))
        return claim

    def _claim(self, ids: frozenset[str]) -> Claim:
        shown = sorted(ids)
        try:
            held = self.holders.held(self.resource)
        except Exception as exc:  # grpc.RpcError and socket errors: kubelet did not answer
            raise HandOffError("podresources", f"kubelet's PodResources API did not answer: {exc}") from None
        exact = [h for h in held if h.device_ids == ids]
        owners = sorted({(h.namespace, h.pod) for h in exact})
        if not owners:
            raise HandOffError("no-holder", f"no container holds exactly {self.resource} {shown} in kubelet's "
                               "PodResources; refusing to guess")
        if len(owners) > 1:
            names = ", ".join(f"{ns}/{name}" for ns, name in owners)
            raise HandOffError("ambiguous", f"{self.resource} {shown} are held by several pods ({names})")
        namespace, name = owners[0]
        containers = tuple(sorted(h.container for h in exact))
        try:
            pod = self.pods.get_pod(namespace, name)
        except Exception as exc:  # the API server is down or refuses: kubelet retries the start
            raise HandOffError("api", f"cannot read pod {namespace}/{name}: {exc}") from None
        if pod is None:
            raise HandOffError("no-pod", f"pod {namespace}/{name} holds {self.resource} {shown} but the API "
                               "server does not show it (yet)", PodInfo("", namespace, name, None))
        if pod.node != self.node or pod.deleting:
            where = "being deleted" if pod.deleting else f"bound to node {pod.node}"
            raise HandOffError("wrong-pod", f"pod {pod.key} is {where}, not starting on node {self.node}", pod)
        for c in containers:
            if pod.share_requests.get(c) != len(ids):
                raise HandOffError("wrong-pod", f"container {c} of pod {pod.key} requests "
                                   f"{pod.share_requests.get(c, 0)} {self.resource}, kubelet allocated {len(ids)}: "
                                   "not the pod kubelet is starting", pod)
        text = pod.annotations.get(ASSIGNMENT_ANNOTATION)
        if text is None:
            raise HandOffError("no-assignment", f"pod {pod.key} has no {ASSIGNMENT_ANNOTATION} annotation "
                               "(not placed by the gpuslice extender?)", pod)
        try:
            assignment = parse_assignment(text)
            if assignment.node != self.node:
                raise HandOffError("wrong-node", f"pod {pod.key}: its assignment is for node {assignment.node}, "
                                   f"this is {self.node}", pod)
            allocation = allocation_for(assignment, self.topology())
        except AtomError as exc:
            raise HandOffError("unsafe-mask", f"pod {pod.key}: {exc}", pod) from None
        except InputError as exc:
            raise HandOffError("bad-assignment", f"pod {pod.key}: {exc}", pod) from None
        return Claim(pod, containers, assignment, allocation, ids, cdi_device(ids))

    def sweep(self) -> list[str]:
        """Remove the CDI specs (and claims) of ids no container holds any more. Returns the names
        removed; removes nothing when kubelet does not answer."""
        with self._lock:
            try:
                live = {cdi_device(h.device_ids) for h in self.holders.held(self.resource)}
            except Exception as exc:
                log.warning("PodResources did not answer; stale CDI specs kept for now: %s", exc)
                return []
            gone = [name for name in spec_devices(self.cdi_dir, CDI_KIND) if name not in live]
            for name in gone:
                remove_spec(self.cdi_dir, CDI_KIND, name)
            for name in [n for n in self._claims if n not in live]:
                del self._claims[name]
        if gone:
            log.info("removed %d stale CDI specs: %s", len(gone), gone)
            if self.metrics:
                self.metrics.cdi_removed.inc(len(gone))
        return gone

    def _count(self, result: str) -> None:
        if self.metrics:
            self.metrics.handoffs.labels(result).inc()

    def _refused(self, exc: HandOffError) -> None:
        log.error("PreStartContainer refused (%s): %s", exc.reason, exc)
        self._count(exc.reason)
        if exc.pod is not None and self.actions is not None:
            try:
                self.actions.event(exc.pod, EVENT_REASON, str(exc))
            except Exception as err:  # the metric and the failed start already say it
                log.error("cannot post the Event on pod %s: %s", exc.pod.key, err)
