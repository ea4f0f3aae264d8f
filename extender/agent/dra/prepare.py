"""NodePrepareResources / NodeUnprepareResources, without the gRPC: exact CU sets for allocated shares.

kube-scheduler has allocated a claim *amounts* of a GPU (computeUnits, memory); Prepare picks *which*
CUs, with the same code the extender's bind uses (engine.placement's `takes_whole`, core.layout's
`choose_cus`/`choose_burst`) and records them in a core Ledger of this node, so every share's
guarantee is XCC-complete and disjoint from every other share on that GPU, and burst comes from the
GPU's shared region up to the claim's `computeLimit`. Prepared claims are checkpointed (checkpoint.py)
before the answer goes back, so a restarted agent re-prepares the same CU sets.
Each request of a claim becomes one CDI device holding the device nodes, `ROCR_VISIBLE_DEVICES`,
`HSA_CU_MASK` and the memory limit (agent.allocation, as for the device plugin).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from extender.agent.allocation import ContainerAllocation, allocation_for
from extender.agent.cdi import ContainerEdits, DeviceNode, remove_spec, write_spec
from extender.agent.dra.checkpoint import (
    CDI_KIND,
    CHECKPOINT,
    PreparedClaim,
    PreparedDevice,
    cdi_device_name,
    load_checkpoint,
    save_checkpoint,
)
from extender.agent.dra.claims import ClaimAllocation, ClaimError, Share, claim_allocation
from extender.agent.dra.slices import DRIVER, device_name, guaranteeable_cus
from extender.agent.pods import PodInfo
from extender.agent.topology import KfdGpu, Topology
from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment, parse_assignment
from extender.core.atoms import check_xcc_complete, round_up_to_atoms
from extender.core.errors import AssignmentError, LedgerConflict
from extender.core.layout import choose_burst, choose_cus
from extender.core.ledger import GpuState, Ledger, PodRef
from extender.core.policy import Policy
from extender.core.rangelist import format_ranges
from extender.engine.placement import takes_whole

log = logging.getLogger(__name__)



class ClaimSource(Protocol):
    def get_claim(self, namespace: str, name: str) -> dict[str, Any]: ...


class ClaimStatusWriter(Protocol):
    def publish_prepared(self, claim: PreparedClaim) -> None: ...


def extender_tenants(pods: Iterable[PodInfo], node: str) -> list[tuple[PodRef, Assignment]]:
    """The extender's tenants on this node: live pods carrying a `gpuslice.io/assignment` for it.
    Prepare chooses around their CUs and memory, so the two paths never double-book a GPU."""
    out = []
    for pod in pods:
        text = pod.annotations.get(ASSIGNMENT_ANNOTATION)
        if text is None or pod.phase in ("Succeeded", "Failed") or pod.node != node:
            continue
        try:
            a = parse_assignment(text)
        except AssignmentError as exc:
            log.warning("pod %s: assignment not counted: %s", pod.key, exc)
            continue
        if a.node == node:
            out.append((PodRef(pod.uid, pod.namespace, pod.name), a))
    return out


class Preparer:
    """Prepares and unprepares claims on one node; thread-safe (kubelet may call concurrently)."""

    def __init__(self, node: str, topology: Callable[[], Topology], claims: ClaimSource,
                 policy: Callable[[], Policy], state_dir: str | Path, cdi_dir: str | Path,
                 status: ClaimStatusWriter | None = None,
                 held: Callable[[], list[tuple[PodRef, Assignment]]] | None = None) -> None:
        self.node = node
        self.held = held  # the extender's tenants on this node (extender_tenants), read at each prepare
        self._held: dict[str, Assignment] = {}
        self.topology = topology
        self.claims = claims
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.cdi_dir = Path(cdi_dir)
        self.status = status
        self._lock = threading.Lock()
        self._prepared: dict[str, PreparedClaim] = {}
        self._unpublished: set[str] = set()  # prepared, CU sets not yet on the claim's status
        start = policy()
        self.ledger = Ledger(start.burst.sharedFraction, start.overcommit.memory)
        self.restored = False

    # --- public -----------------------------------------------------------------------------
    def prepare(self, uid: str, namespace: str, name: str) -> PreparedClaim:
        """Idempotent: a claim prepared before (by this process or one before it) gets the same answer.
        Raises ClaimError, AssignmentError (refused as it is) or LedgerConflict (does not fit)."""
        with self._lock:
            done = self._prepared.get(uid)
            if done is not None:
                self._write_cdi(done)  # the spec directory may be a tmpfs emptied since
                return done
            claim = self.claims.get_claim(namespace, name)
            got = str((claim.get("metadata") or {}).get("uid", ""))
            if got != uid:
                raise ClaimError("claim.uid", got, f"claim {namespace}/{name} is not the one kubelet asks for ({uid})")
            prepared = self._decide(claim_allocation(claim, self.node))
            try:
                self._write_cdi(prepared)
                self._prepared[uid] = prepared
                self._save()
            except BaseException:
                self._prepared.pop(uid, None)
                self.ledger.release(uid)
                for d in prepared.devices:
                    remove_spec(self.cdi_dir, CDI_KIND, d.cdi_device)
                raise
        log.info("prepared claim %s/%s (%s): %s", namespace, name, uid,
                 "; ".join(f"gpu {g.index} cus {format_ranges(g.cus)}" for g in prepared.assignment.gpus))
        self._publish(prepared)
        return prepared

    def _publish(self, prepared: PreparedClaim) -> bool:
        """Write the CU sets to the claim's status, where the extender counts them; a failure is
        retried by `publish_pending` (the container can start meanwhile: the sets are checkpointed)."""
        if self.status is None:
            return True
        try:
            self.status.publish_prepared(prepared)
        except Exception as exc:
            self._unpublished.add(prepared.uid)
            log.warning("cannot publish prepared CU sets of claim %s/%s (retried): %s", prepared.namespace,
                        prepared.name, exc)
            return False
        self._unpublished.discard(prepared.uid)
        return True

    def publish_pending(self) -> int:
        """Retry the status writes that failed; returns how many are still pending."""
        with self._lock:
            pending = [self._prepared[u] for u in self._unpublished if u in self._prepared]
            self._unpublished &= set(self._prepared)
        for prepared in pending:
            self._publish(prepared)
        return len(self._unpublished)

    def unprepare(self, uid: str) -> bool:
        """Free a claim's shares; False when it held none (unprepare is idempotent)."""
        with self._lock:
            done = self._prepared.pop(uid, None)
            if done is None:
                return False
            self.ledger.release(uid)
            for d in done.devices:
                remove_spec(self.cdi_dir, CDI_KIND, d.cdi_device)
            self._save()
        log.info("unprepared claim %s/%s (%s)", done.namespace, done.name, uid)
        return True

    def prepared(self) -> list[PreparedClaim]:
        with self._lock:
            return list(self._prepared.values())

    # --- deciding ---------------------------------------------------------------------------
    def _sync_node(self) -> Topology:
        topology = self.topology()
        self.ledger.set_node(self.node, topology.inventory())
        return topology

    def _sync_held(self) -> None:
        """Bring the extender's tenants on this node into the ledger (and drop those that ended)."""
        if self.held is None:
            return
        now = {ref.uid: (ref, a) for ref, a in self.held()}
        for uid in [u for u, a in self._held.items() if u not in now or now[u][1] != a]:
            self.ledger.release(uid)
            del self._held[uid]
        for uid, (ref, a) in now.items():
            if uid in self._held:
                continue
            try:
                self.ledger.reserve(ref, a, a.workload_class, 0, ttl=None)
            except LedgerConflict as exc:  # already double-booked before this agent saw it: say so loudly
                log.error("extender pod %s overlaps a prepared DRA claim: %s", ref.key, exc)
                continue
            self._held[uid] = a

    def _decide(self, alloc: ClaimAllocation) -> PreparedClaim:
        if not alloc.shares:
            raise ClaimError("status.allocation.devices.results", self.node,
                             f"no device of driver {DRIVER} in this node's pool")
        topology = self._sync_node()
        self._sync_held()
        policy = self.policy()
        state = self.ledger.node(self.node)
        assert state is not None
        by_name = {device_name(g.info): g for g in topology.gpus}
        gpus: list[GpuAssignment] = []
        devices: list[PreparedDevice] = []
        classes: set[str] = set()
        millis = 0
        for i, share in enumerate(alloc.shares):
            kfd = by_name.get(share.device)
            if kfd is None:
                raise ClaimError(f"results[{i}].device", share.device, "no such GPU on this node now")
            if not kfd.info.healthy:
                raise ClaimError(f"results[{i}].device", share.device,
                                 f"GPU is unhealthy: {'; '.join(kfd.problems)}")
            gpu = state.gpu(kfd.info.index)
            assert gpu is not None
            if any(g.index == kfd.info.index for g in gpus):
                raise ClaimError(f"results[{i}].device", share.device,
                                 "two shares of one GPU in one claim are not supported; ask for one larger share")
            ga = self._share_on(share, kfd, gpu, policy, f"results[{i}]")
            gpus.append(ga)
            millis = max(millis, len(ga.cus) * 1000 // kfd.info.computeUnits)
            classes.add(share.params.workload_class or policy.classes.default)
            devices.append(PreparedDevice(share.request, share.pool, share.device, share.share_id, kfd.info.index,
                                          cdi_device_name(alloc.uid, share.request)))
        if len(classes) > 1:
            raise ClaimError("opaque.parameters.class", sorted(classes), "one claim holds one workload class")
        assignment = Assignment(node=self.node, gpus=tuple(gpus), workload_class=classes.pop(), policy=DRIVER)
        self.ledger.reserve(PodRef(alloc.uid, alloc.namespace, alloc.name), assignment,
                            assignment.workload_class, millis, ttl=None)
        return PreparedClaim(alloc.uid, alloc.namespace, alloc.name, assignment, tuple(devices))

    def _share_on(self, share: Share, kfd: KfdGpu, gpu: GpuState, policy: Policy, where: str) -> GpuAssignment:
        info = kfd.info
        atom = round_up_to_atoms(1, info.xcds)
        capacity = guaranteeable_cus(info, self.ledger.shared_fraction)
        asked = share.compute_units
        n = info.computeUnits if asked is None or asked >= capacity else asked
        if n % atom or n <= 0:
            raise ClaimError(f"{where}.consumedCapacity.computeUnits", asked,
                             f"not a whole number of {atom}-CU atoms (the slice's request policy rounds to them)")
        free = frozenset(range(info.computeUnits)) if takes_whole(gpu, n) else gpu.free_cus
        cus = choose_cus(free, n, info.xcds)
        if cus is None:
            raise LedgerConflict(f"{self.node} {share.device}: needs {n} CUs, {len(free)} free "
                                 "(another tenant — an extender pod? — holds them)")
        check_xcc_complete(cus, info.xcds, f"{where} guaranteed CUs")
        whole = len(cus) == info.computeUnits
        burst: frozenset[int] = frozenset()
        if not whole and share.params.compute_limit is not None:
            extra = (share.params.compute_limit - n) // atom * atom
            burst = choose_burst(gpu.burst_cus, extra, info.xcds)
            if burst:
                check_xcc_complete(burst, info.xcds, f"{where} burst CUs")
        memory = info.memoryBytes if share.memory_bytes is None else share.memory_bytes
        limit = share.params.memory_limit if share.params.memory_limit is not None else memory
        if limit < memory:
            raise ClaimError("opaque.parameters.memoryLimit", limit, f"below the consumed memory {memory}")
        return GpuAssignment(index=info.index, id=info.id, cus=cus, burstCus=burst, memoryBytes=memory,
                             memoryLimitBytes=limit)

    # --- CDI --------------------------------------------------------------------------------
    def allocations(self, prepared: PreparedClaim) -> dict[str, ContainerAllocation]:
        """What a container gets, by CDI device (one per request)."""
        topology = self.topology()
        by_cdi: dict[str, list[GpuAssignment]] = {}
        for d in prepared.devices:
            by_cdi.setdefault(d.cdi_device, []).append(prepared.gpu(d.gpu_index))
        a = prepared.assignment
        return {name: allocation_for(Assignment(a.node, tuple(gpus), a.workload_class, a.policy, a.assignedAt),
                                     topology)
                for name, gpus in by_cdi.items()}

    def _write_cdi(self, prepared: PreparedClaim) -> None:
        for name, alloc in self.allocations(prepared).items():
            edits = ContainerEdits(env=alloc.envs, device_nodes=tuple(DeviceNode(p) for p in alloc.devices))
            write_spec(self.cdi_dir, CDI_KIND, name, edits)

    # --- checkpoint -------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.state_dir / CHECKPOINT

    def _save(self) -> None:
        save_checkpoint(self.checkpoint, self._prepared)

    def restore(self) -> None:
        """Claims prepared before a restart: back into the ledger with the CU sets they had. Call once
        the topology is known and before serving kubelet. An unreadable checkpoint raises (every time:
        serving without it could hand out CUs that running containers hold)."""
        claims = load_checkpoint(self.checkpoint)
        self._sync_node()
        for uid, claim in claims.items():
            try:
                self.ledger.reserve(PodRef(uid, claim.namespace, claim.name), claim.assignment,
                                    claim.assignment.workload_class, 0, ttl=None)
            except LedgerConflict as exc:
                log.error("checkpointed claim %s cannot be restored: %s", uid, exc)
                continue
            self._prepared[uid] = claim
        self.restored = True
        log.info("restored %d prepared claims from %s", len(self._prepared), self.checkpoint)
