"""Per-GPU ledgers of guaranteed CUs, burst CUs and memory, for every node.

Readers never lock: each node's state is an immutable snapshot that writers replace whole
(copy-on-write) under that node's lock. So filter and prioritize read a consistent view while a
bind on the same node is in flight, binds on one node serialize, and binds on different nodes do
not block each other.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from extender.core.assignment import Assignment, GpuAssignment
from extender.core.atoms import is_xcc_complete, xcd_counts
from extender.core.cuset import CuSet, mask
from extender.core.errors import LedgerConflict
from extender.core.fit import COMPUTE_BOUND, MEMORY_BOUND, Demand, Room, Rules, verdict
from extender.core.gpuindex import GpuIndex
from extender.core.interning import shared_int
from extender.core.inventory import GpuInfo
from extender.core.layout import free_atoms
from extender.core.policy import region_size


def burst_region(info: GpuInfo, shared_fraction: float) -> frozenset[int]:
    """The top CU bits of the GPU, whole atoms (a contiguous run of them is XCC-complete)."""
    size = region_size(info.computeUnits, info.xcds, shared_fraction)
    return CuSet.shared(CuSet.span(info.computeUnits - size, info.computeUnits).bits)


@dataclass(frozen=True, slots=True)
class PodRef:
    uid: str
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Slice:
    """One tenant's share of one GPU."""

    pod: PodRef
    workload_class: str
    cus: frozenset[int]
    burst: frozenset[int]
    memory: int
    memory_limit: int


class Shape:
    """What placement cannot tell apart between GPU states (see GpuState.shape), with placement's
    answers for it per request (`answers`, keyed by the caller). Every live state of that shape holds
    this one object; when the last one is replaced it goes, answers and all, so the answers kept follow
    the live cluster instead of every state churn ever made."""

    __slots__ = ("answers", "__weakref__")

    def __init__(self) -> None:
        self.answers: dict[object, object] = {}


_SHAPES: weakref.WeakValueDictionary[tuple, Shape] = weakref.WeakValueDictionary()
_SHAPES_LOCK = threading.Lock()


def _shape_of(key: tuple) -> Shape:
    shape = _SHAPES.get(key)
    if shape is None:
        with _SHAPES_LOCK:
            shape = _SHAPES.setdefault(key, Shape())
    return shape


_COUNTS: dict[tuple, Mapping[str, int]] = {}
_COUNTS_LIMIT = 4096  # distinct tenant-class counts kept (a few dozen occur); past it, counts are not shared


def _shared_counts(counts: dict[str, int]) -> Mapping[str, int]:
    """One read-only map per distinct tenant-class count (GPU states repeat a few dozen of them)."""
    key = tuple(sorted(counts.items()))
    shared = _COUNTS.get(key)
    if shared is None:
        shared = MappingProxyType(counts)
        if len(_COUNTS) < _COUNTS_LIMIT:
            shared = _COUNTS.setdefault(key, shared)
    return shared


@dataclass(frozen=True, slots=True)
class GpuState:
    """One GPU's ledger. Its derived figures are worked out once, when the (immutable) state is made,
    into slots: 40,000 of these at 5,000 nodes, and a per-object __dict__ of cached values cost ~0.6 KiB
    each. CU sets are CuSets (one shared bit mask each, read as frozensets): a frozenset per GPU state
    and per tenant costs kilobytes, which at 100,000 tenants is gigabytes."""

    info: GpuInfo
    shared: frozenset[int]
    slices: tuple[Slice, ...] = ()
    guaranteed: CuSet = field(init=False, compare=False, repr=False)
    bursting: CuSet = field(init=False, compare=False, repr=False)  # CUs in some tenant's burst set
    # CUs that can still be guaranteed: not in the burst region, not guaranteed to anyone, and in no
    # tenant's burst set (which may lie outside the region after a policy change).
    free_cus: CuSet = field(init=False, compare=False, repr=False)
    # Free CUs a guarantee can take: whole atoms only (the fewest free bits of any XCD, times the XCD
    # count). Less than len(free_cus) when free bits are uneven over XCDs.
    free_atom_cus: int = field(init=False, compare=False, repr=False)
    # Maximal runs of free CU bits as (start, length), in bit order (placement's hot path).
    free_runs: tuple[tuple[int, int], ...] = field(init=False, compare=False, repr=False)
    used_cus: int = field(init=False, compare=False, repr=False)  # guaranteed CUs outside the burst region
    # The shared burst region as it stands (less any bits an older policy guaranteed).
    burst_cus: CuSet = field(init=False, compare=False, repr=False)
    memory_used: int = field(init=False, compare=False, repr=False)
    memory_limit_used: int = field(init=False, compare=False, repr=False)
    class_counts: Mapping[str, int] = field(init=False, compare=False, repr=False)
    _shape: Shape | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        guaranteed = bursting = memory = limit = 0
        counts: dict[str, int] = {}
        for s in self.slices:
            guaranteed |= mask(s.cus)
            bursting |= mask(s.burst)
            memory += s.memory
            limit += s.memory_limit
            counts[s.workload_class] = counts.get(s.workload_class, 0) + 1
        shared = mask(self.shared)
        every = (1 << self.info.computeUnits) - 1
        free = CuSet.shared(every & ~(shared | guaranteed | bursting))
        put(self, "guaranteed", CuSet.shared(guaranteed))
        put(self, "bursting", CuSet.shared(bursting))
        put(self, "free_cus", free)
        # The figures repeat across GPU states (CU counts, sums of a few memory sizes): one int object each.
        put(self, "free_atom_cus", shared_int(free_atoms(free, self.info.xcds) * max(1, self.info.xcds)))
        put(self, "free_runs", free.run_tuple())  # == layout.runs(free_cus), without a sort; shared
        put(self, "used_cus", shared_int((guaranteed & ~shared).bit_count()))
        put(self, "burst_cus", CuSet.shared(shared & ~guaranteed))
        put(self, "memory_used", shared_int(memory))
        put(self, "memory_limit_used", shared_int(limit))
        put(self, "class_counts", _shared_counts(counts))
        put(self, "_shape", None)

    def room(self, overcommit: float, rules: Rules) -> Room:
        """This GPU as the fit rule (core/fit.py) reads it."""
        info = self.info
        counts = self.class_counts
        return Room(info.healthy, info.computeUnits, self.free_atom_cus, len(self.slices), self.memory_free,
                    math.floor(info.memoryBytes * overcommit) - self.memory_limit_used,
                    counts.get(MEMORY_BOUND, 0), counts.get(COMPUTE_BOUND, 0), rules.units_of(counts))

    @property
    def memory_free(self) -> int:
        return self.info.memoryBytes - self.memory_used

    def count(self, workload_class: str) -> int:
        return self.class_counts.get(workload_class, 0)

    @property
    def shape(self) -> Shape:
        """An id shared by every GPU state that placement cannot tell apart (same model and health,
        same free CU runs, burst region, memory and tenant classes), so that a request's per-GPU
        answer is worked out once for all such GPUs, e.g. every empty GPU of a model. Made on first
        use (only states placement reads get one)."""
        shape = self._shape
        if shape is None:
            info = self.info
            shape = _shape_of((info.model, info.computeUnits, info.xcds, info.memoryBytes, info.healthy,
                              self.free_runs, mask(self.burst_cus), len(self.shared), self.memory_used,
                              self.memory_limit_used, tuple(sorted(self.class_counts.items()))))
            object.__setattr__(self, "_shape", shape)
        return shape

    def to_dict(self) -> dict[str, object]:
        from extender.core.rangelist import format_ranges

        return {
            "index": self.info.index, "id": self.info.id, "model": self.info.model,
            "healthy": self.info.healthy, "computeUnits": self.info.computeUnits,
            "freeCus": len(self.free_cus), "burstRegion": format_ranges(self.burst_cus),
            "memoryBytes": self.info.memoryBytes, "memoryUsedBytes": self.memory_used,
            "memoryLimitUsedBytes": self.memory_limit_used,
            "tenants": [{"pod": s.pod.key, "uid": s.pod.uid, "class": s.workload_class,
                         "cus": format_ranges(s.cus), "burstCus": format_ranges(s.burst),
                         "xccComplete": is_xcc_complete(s.cus, self.info.xcds)
                         and is_xcc_complete(s.cus | s.burst, self.info.xcds),
                         "memoryBytes": s.memory, "memoryLimitBytes": s.memory_limit}
                        for s in self.slices],
        }


@dataclass(frozen=True, slots=True)
class PodEntry:
    pod: PodRef
    workload_class: str
    compute_millis: int
    assignment: Assignment
    expires_at: float | None  # None once bound; a deadline while only reserved

    @property
    def reserved(self) -> bool:
        return self.expires_at is not None


@dataclass(frozen=True)
class NodeState:
    name: str
    gpus: tuple[GpuState, ...]
    pods: Mapping[str, PodEntry] = field(default_factory=lambda: MappingProxyType({}))
    # Placement results for this exact (immutable) state, keyed by request and policy version:
    # filter then prioritize then bind of one pod evaluate a node once, not three times.
    memo: dict[object, object] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def gpu(self, index: int) -> GpuState | None:
        for g in self.gpus:
            if g.info.index == index:
                return g
        return None

    def without(self, uid: str) -> NodeState:
        """This state as if pod `uid` held nothing here."""
        return _without(self, uid)

    def to_dict(self) -> dict[str, object]:
        return {"node": self.name, "gpus": [g.to_dict() for g in self.gpus],
                "reservations": sorted(p.pod.key for p in self.pods.values() if p.reserved)}


class _Node:
    __slots__ = ("lock", "state")

    def __init__(self, state: NodeState) -> None:
        self.lock = threading.RLock()
        self.state = state


@dataclass
class Usage:
    compute_millis: int = 0
    memory: int = 0
    tenants: int = 0


def _check(state: NodeState, entry: PodEntry, overcommit: float, rules: Rules | None) -> list[GpuState]:
    """Validate `entry` against `state` (which must not hold it) and return the new GPU states.

    Every entry must fit physically: CUs on the GPU and nobody else's, memory within the GPU and limits
    within the overcommit factor. A new placement (`rules` given) must also obey the fit rule
    (core/fit.py: whole atoms, class limits, bandwidth budget, whole-GPU exclusivity), take no bit of
    the shared burst region unless it takes the whole GPU, and hand out XCC-complete masks. A fact read
    back from a pod (`rules` None) is recorded even when it breaks those: it runs, so its CUs must stay
    counted (legacy assignments; see README "CU masks and atoms")."""
    a = entry.assignment
    new_gpus = list(state.gpus)
    positions = {g.info.index: i for i, g in enumerate(state.gpus)}
    if len({ga.index for ga in a.gpus}) != len(a.gpus):
        raise LedgerConflict(f"{state.name}: an assignment names a GPU twice")
    for ga in a.gpus:
        pos = positions.get(ga.index)
        if pos is None:
            raise LedgerConflict(f"{state.name}: no gpu {ga.index}")
        # The annotation parser enforces these too; the ledger is the last line for hand-made input.
        if not ga.cus or ga.cus & ga.burstCus or not 0 < ga.memoryBytes <= ga.memoryLimitBytes:
            raise LedgerConflict(f"{state.name} gpu {ga.index}: malformed slice (no CUs, burst overlapping "
                                 f"them, or memory {ga.memoryBytes} not within 1..{ga.memoryLimitBytes})")
        gpu = new_gpus[pos]
        if ga.id != gpu.info.id:
            raise LedgerConflict(f"{state.name} gpu {ga.index}: id {ga.id} is not {gpu.info.id}")
        total = gpu.info.computeUnits
        if any(c >= total or c < 0 for c in ga.cus | ga.burstCus):
            raise LedgerConflict(f"{state.name} gpu {ga.index}: CU beyond the GPU's {total}")
        taken = ga.cus & gpu.guaranteed
        if taken:
            raise LedgerConflict(f"{state.name} gpu {ga.index}: CUs {sorted(taken)[:8]} already guaranteed")
        if ga.burstCus & gpu.guaranteed:
            raise LedgerConflict(f"{state.name} gpu {ga.index}: burst CUs overlap guaranteed CUs")
        lent = ga.cus & gpu.bursting
        if lent:  # a guarantee is exclusive: no other tenant's mask may include it
            raise LedgerConflict(f"{state.name} gpu {ga.index}: CUs {sorted(lent)[:8]} are in another "
                                 f"tenant's burst")
        if gpu.memory_used + ga.memoryBytes > gpu.info.memoryBytes:
            raise LedgerConflict(f"{state.name} gpu {ga.index}: memory {ga.memoryBytes} > "
                                 f"{gpu.memory_free} free")
        if gpu.memory_limit_used + ga.memoryLimitBytes > gpu.info.memoryBytes * overcommit:
            raise LedgerConflict(f"{state.name} gpu {ga.index}: memory limits over {overcommit}x the GPU")
        if rules is not None:
            _check_new(state.name, gpu, ga, entry.workload_class, overcommit, rules)
        new_gpus[pos] = replace(gpu, slices=gpu.slices + (
            Slice(entry.pod, entry.workload_class, ga.cus, ga.burstCus, ga.memoryBytes, ga.memoryLimitBytes),))
    return new_gpus


def _check_new(node: str, gpu: GpuState, ga: GpuAssignment, workload_class: str, overcommit: float,
               rules: Rules) -> None:
    where = f"{node} gpu {ga.index}"
    xcds = gpu.info.xcds
    whole = len(ga.cus) >= gpu.info.computeUnits  # every CU: the agent sets no mask at all
    for cus, what in ((ga.cus, "cus"), (ga.cus | ga.burstCus, "cus+burstCus")):
        if not whole and not is_xcc_complete(cus, xcds):
            raise LedgerConflict(f"{where}: {what} {xcd_counts(cus, xcds)} bits per XCD: not whole atoms of "
                                 f"{xcds} CUs (an XCD without a bit runs unmasked)")
    no = verdict(gpu.room(overcommit, rules), Demand(len(ga.cus), ga.memoryBytes, ga.memoryLimitBytes,
                                                     workload_class), rules)
    if no is not None:
        raise LedgerConflict(f"{where}: breaks the fit rule ({no.category}: {no})")
    if not whole and ga.cus & gpu.shared:
        raise LedgerConflict(f"{where}: guarantees CUs of the shared burst region")
    if ga.burstCus - gpu.burst_cus:
        raise LedgerConflict(f"{where}: burst CUs outside the shared burst region")


def _without(state: NodeState, uid: str) -> NodeState:
    if uid not in state.pods:
        return state
    gpus = tuple(replace(g, slices=tuple(s for s in g.slices if s.pod.uid != uid))
                 if any(s.pod.uid == uid for s in g.slices) else g for g in state.gpus)
    pods = {k: v for k, v in state.pods.items() if k != uid}
    return NodeState(state.name, gpus, MappingProxyType(pods))


class Ledger:
    """Every node's GPU ledger, plus the pod-UID index and per-namespace usage."""

    def __init__(self, shared_fraction: float = 0.125, overcommit: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, rules: Rules | None = None) -> None:
        self.shared_fraction = shared_fraction
        self.overcommit = overcommit
        # The policy's class rules, which new placements must obey too (the engine keeps them current);
        # without them only capacity, atoms and whole-GPU exclusivity are checked.
        self.rules = rules if rules is not None else Rules(max_memory_bound=None, bandwidth_share={})
        self.clock = clock
        self._nodes: dict[str, _Node] = {}
        self._where: dict[str, str] = {}  # pod uid -> node
        self._reserving: set[str] = set()  # nodes that may hold reservations: all that expire() visits
        self._usage: dict[str, Usage] = {}
        self._index = threading.Lock()
        self.expired_total = 0
        self.conflicts_total = 0
        self.gpu_index = GpuIndex()  # every node's GPUs as columns, rewritten with each state (see _put)

    # --- nodes -------------------------------------------------------------------------------
    def set_node(self, name: str, gpus: Iterable[GpuInfo]) -> None:
        """Create a node or update its inventory. Tenants stay on GPUs that vanish from it: such a
        GPU is kept, marked unhealthy, until they end."""
        infos = {g.index: g for g in gpus}
        with self._index:
            node = self._nodes.get(name)
            if node is None:
                state = NodeState(
                    name, tuple(GpuState(i, burst_region(i, self.shared_fraction)) for i in infos.values()))
                self.gpu_index.put(state)
                self._nodes[name] = _Node(state)
                return
        with node.lock:
            old = node.state
            merged: list[GpuState] = []
            for g in old.gpus:
                info = infos.pop(g.info.index, None)
                if info is None:
                    if g.slices:
                        merged.append(replace(g, info=replace(g.info, healthy=False)))
                    continue
                if info.computeUnits != g.info.computeUnits and g.slices:
                    info = replace(info, healthy=False)  # layout changed under live tenants
                merged.append(replace(g, info=info, shared=burst_region(info, self.shared_fraction)))
            merged.extend(GpuState(i, burst_region(i, self.shared_fraction)) for i in infos.values())
            merged.sort(key=lambda g: g.info.index)
            self._put(node, NodeState(name, tuple(merged), old.pods))

    def _put(self, node: _Node, state: NodeState) -> None:
        """Replace a node's state (caller holds its lock) and its rows of the index."""
        with self.gpu_index.writing():
            node.state = state
            if self._nodes.get(state.name) is node:  # a node removed meanwhile stays out of the index
                self.gpu_index.put(state)

    def remove_node(self, name: str) -> None:
        node = self._nodes.get(name)
        if node is None:
            return
        with node.lock:  # after any reserve under way there: its pod is then uncounted with the rest
            with self._index:
                if self._nodes.get(name) is not node:
                    return
                del self._nodes[name]
                self.gpu_index.remove(name)
                for uid, entry in node.state.pods.items():
                    if self._where.get(uid) == name:
                        del self._where[uid]
                    self._account(entry, -1)

    def set_burst_fraction(self, fraction: float) -> None:
        self.shared_fraction = fraction
        for node in list(self._nodes.values()):
            with node.lock:
                s = node.state
                self._put(node, NodeState(s.name, tuple(replace(g, shared=burst_region(g.info, fraction))
                                                        for g in s.gpus), s.pods))

    def node(self, name: str) -> NodeState | None:
        n = self._nodes.get(name)
        return n.state if n else None

    def states(self, names: Iterable[str]) -> list[NodeState | None]:
        """node() for many names at once (filter asks for thousands per call)."""
        get = self._nodes.get
        return [n.state if (n := get(name)) is not None else None for name in names]

    def node_names(self) -> list[str]:
        return list(self._nodes)

    def nodes(self) -> list[NodeState]:
        return [n.state for n in list(self._nodes.values())]

    @contextmanager
    def locked(self, name: str) -> Iterator[NodeState]:
        """Hold a node's lock across a read-decide-reserve sequence."""
        node = self._nodes.get(name)
        if node is None:
            raise LedgerConflict(f"node {name} is not in the ledger")
        with node.lock:
            yield node.state

    # --- pods --------------------------------------------------------------------------------
    def reserve(self, pod: PodRef, assignment: Assignment, workload_class: str, compute_millis: int,
                ttl: float | None, *, new: bool | None = None) -> None:
        """Reserve (ttl seconds) or record as bound (ttl None). A repeated call for the same pod UID
        replaces the earlier entry. Raises LedgerConflict and changes nothing on overlap or overflow.
        `new` (default: a reservation, ttl given) holds the assignment to every rule of a new placement;
        otherwise it is a fact from the cluster, recorded if it fits physically (see `_check`)."""
        strict = ttl is not None if new is None else new
        node = self._nodes.get(assignment.node)
        if node is None:
            raise LedgerConflict(f"node {assignment.node} is not in the ledger")
        entry = PodEntry(pod, workload_class, compute_millis, assignment,
                         None if ttl is None else self.clock() + ttl)
        with node.lock:
            if self._nodes.get(assignment.node) is not node:  # removed since it was looked up
                raise LedgerConflict(f"node {assignment.node} is not in the ledger")
            base = _without(node.state, pod.uid)
            try:
                gpus = _check(base, entry, self.overcommit, self.rules if strict else None)
            except LedgerConflict:
                with self._index:
                    self.conflicts_total += 1
                raise
            pods = dict(base.pods)
            pods[pod.uid] = entry
            previous = node.state.pods.get(pod.uid)
            self._put(node, NodeState(base.name, tuple(gpus), MappingProxyType(pods)))
            if ttl is not None:
                self._reserving.add(base.name)
            with self._index:
                elsewhere = self._where.get(pod.uid)
                self._where[pod.uid] = assignment.node
                if previous is not None:
                    self._account(previous, -1)
                self._account(entry, +1)
        if elsewhere is not None and elsewhere != assignment.node:
            self._drop(elsewhere, pod.uid)

    def commit(self, uid: str, assignment: Assignment | None = None) -> bool:
        """Turn a reservation into a bound entry (no expiry). With `assignment`, only if the pod's entry
        is still that one (it may have expired, or a retried bind may have replaced it)."""
        name = self._where.get(uid)
        node = self._nodes.get(name) if name else None
        if node is None:
            return False
        with node.lock:
            s = node.state
            entry = s.pods.get(uid)
            if entry is None or (assignment is not None and entry.assignment != assignment):
                return False
            pods = dict(s.pods)
            pods[uid] = replace(entry, expires_at=None)
            node.state = NodeState(s.name, s.gpus, MappingProxyType(pods))  # same GPUs: index rows stand
        return True

    def release(self, uid: str, assignment: Assignment | None = None) -> bool:
        """Free a pod's slice (pod ended, bind failed). Returns False if it held none. With
        `assignment`, only if the pod's entry is still that one: a failed bind must not free a slice
        that another bind of the same pod recorded meanwhile."""
        if assignment is not None:
            name = self._where.get(uid)
            return name is not None and self._drop(name, uid, assignment)
        with self._index:
            name = self._where.pop(uid, None)
        if name is None:
            return False
        return self._drop(name, uid)

    def _drop(self, name: str, uid: str, assignment: Assignment | None = None) -> bool:
        node = self._nodes.get(name)
        if node is None:
            return False
        with node.lock:
            entry = node.state.pods.get(uid)
            if entry is None or (assignment is not None and entry.assignment != assignment):
                return False
            self._put(node, _without(node.state, uid))
            with self._index:
                if assignment is not None and self._where.get(uid) == name:
                    del self._where[uid]
                self._account(entry, -1)
        return True

    def expire(self, on_node: Callable[[str], None] | None = None) -> int:
        """Drop reservations past their deadline (their bind never completed). Returns the count;
        `on_node` is called with each node that got capacity back."""
        now = self.clock()
        dropped = 0
        for name in list(self._reserving):
            node = self._nodes.get(name)
            if node is None:
                self._reserving.discard(name)
                continue
            with node.lock:  # reserve() adds to _reserving under this lock, so no reservation is missed
                if not any(e.expires_at is not None for e in node.state.pods.values()):
                    self._reserving.discard(name)
                    continue
                for uid, e in list(node.state.pods.items()):
                    if e.expires_at is None or e.expires_at > now:
                        continue
                    self._put(node, _without(node.state, uid))
                    with self._index:
                        if self._where.get(uid) == node.state.name:
                            del self._where[uid]
                        self._account(e, -1)
                    dropped += 1
                    if on_node is not None:
                        on_node(name)
        self.expired_total += dropped
        return dropped

    def node_of(self, uid: str) -> str | None:
        """The node pod `uid` holds (or reserves) a slice on, if any."""
        return self._where.get(uid)

    def entry(self, uid: str) -> PodEntry | None:
        name = self._where.get(uid)
        state = self.node(name) if name else None
        return state.pods.get(uid) if state else None

    def usage(self, namespace: str) -> Usage:
        with self._index:
            u = self._usage.get(namespace, Usage())
            return Usage(u.compute_millis, u.memory, u.tenants)

    def _account(self, entry: PodEntry, sign: int) -> None:
        u = self._usage.setdefault(entry.pod.namespace, Usage())
        u.compute_millis += sign * entry.compute_millis * len(entry.assignment.gpus)
        u.memory += sign * sum(g.memoryBytes for g in entry.assignment.gpus)
        u.tenants += sign

    def incomplete_masks(self) -> list[str]:
        """Tenants whose guaranteed or burst mask misses an XCD or is uneven over XCDs: legacy
        assignments recorded as facts. Their CUs stay counted; nothing new is placed that way."""
        out = []
        for state in self.nodes():
            for g in state.gpus:
                out += [f"{s.pod.key} on {state.name} gpu {g.info.index}" for s in g.slices
                        if not (is_xcc_complete(s.cus, g.info.xcds) and is_xcc_complete(s.cus | s.burst, g.info.xcds))]
        return out

    def snapshot(self) -> dict[str, object]:
        return {"nodes": [s.to_dict() for s in sorted(self.nodes(), key=lambda s: s.name)],
                "expiredReservations": self.expired_total}


def rebuild(nodes: Mapping[str, list[GpuInfo]], bound: Iterable[tuple[PodRef, Assignment, int]],
            shared_fraction: float = 0.125, overcommit: float = 1.0,
            clock: Callable[[], float] = time.monotonic, rules: Rules | None = None) -> tuple[Ledger, list[str]]:
    """A ledger built from the cluster's facts: node inventories and pods' assignment annotations
    (pod, assignment, compute millis). Assignments that no longer fit are reported, not applied; those
    whose masks are not XCC-complete (legacy) are applied, and listed by `Ledger.incomplete_masks`."""
    ledger = Ledger(shared_fraction, overcommit, clock, rules)
    for name, gpus in nodes.items():
        ledger.set_node(name, gpus)
    problems: list[str] = []
    for pod, assignment, millis in sorted(bound, key=lambda b: (b[1].assignedAt, b[0].uid)):
        try:
            ledger.reserve(pod, assignment, assignment.workload_class, millis, ttl=None)
        except LedgerConflict as exc:
            problems.append(f"pod {pod.key} ({pod.uid}): {exc}")
    return ledger, problems


__all__ = ["GpuAssignment", "GpuState", "Ledger", "NodeState", "PodEntry", "PodRef", "Slice", "Usage",
           "burst_region", "rebuild"]
