"""The extender's decisions — filter, prioritize, bind — over a cluster and a ledger.

This is the one placement path: the HTTP face, the Kubernetes watch and the simulator all call it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress

import numpy as np

from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, ParsedAnnotations, assignment_in
from extender.core.bounds import is_refusal, refusal_key
from extender.core.errors import AssignmentError, InputError, InventoryError, LedgerConflict, SliceRequestError
from extender.core.fit import Rules
from extender.core.inventory import (
    INVENTORY_ANNOTATION,
    LABEL_CU_COUNT,
    LABEL_PRODUCT,
    LABEL_VRAM,
    RESOURCE_AMD_GPU,
    GpuInfo,
    inventory_for_node,
)
from extender.core.ledger import GpuState, Ledger, NodeState, PodRef, burst_region, rebuild
from extender.core.policy import Policy
from extender.core.requests import SliceRequest, parse_slice_request
from extender.engine.candidates import at_most_mask, candidate_mask
from extender.engine.cluster import BindError, Cluster, HostRoom, NodeView, PodView
from extender.engine.dra_requests import ClaimNotSeen, ClaimSpecs, allocator_may_break_rules, dra_slice_request
from extender.engine.fragmentation import Fragmentation, NamedRises, rise_scores
from extender.engine.fragmentation import candidate_mask as within_tolerance
from extender.engine.placement import NodeFit, build_assignment, check, evaluate, fit_key, rank, to_score
from extender.engine.policy_store import PolicyStore
from extender.engine.preemption import Victims, preempt
from extender.engine.score_memo import ScoreMemo
from extender.engine.swaplock import LockTimeout, SwapLock
from extender.engine.vectorised import CATEGORIES, Columns, exact_gpu_score, node_scores

log = logging.getLogger(__name__)

NEUTRAL_SCORE = 5
# The request columns are read with for a pod that asks for no GPU (only host fields are used).
PASS_THROUGH = SliceRequest("amd", 0, 0, 0, 0, 1, "compute-bound")
# Why filter rejected a node (the `reason` label of gpuslice_filter_rejections_total).
REJECTION_REASONS = ("invalid-request", "quota", "inventory", "unknown-node", "unhealthy", "compute", "memory",
                     "memory-limit", "class-rule", "bandwidth", "no-gpus", "fragmentation", "candidates",
                     "claim-not-seen")
PENDING_CACHE = 20_000
PENDING_BYTES = 64 * 2**20  # label and annotation text the pending cache may hold (filter bodies are untrusted)
DEFAULT_SCHEDULER = "default-scheduler"  # what the API server writes when a pod names no scheduler
# A bind answers inside kube-scheduler's 5 s httpTimeout: at most this long for each of the ledger's two
# locks, the rest for the API (kube/cluster.py LOOKUP_BUDGET and BIND_BUDGET).
LOCK_WAIT = 0.5
MEMO_LIMIT = 128  # results per node state (filter and place results of recent request shapes)


@dataclass
class FilterResult:
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    error: str = ""
    # With fragmentation scoring: per passing node, how much its best placement raises the expected
    # fragmentation (GPUs); filter's candidates and prioritize's scores come from it.
    rises: Mapping[str, float] = field(default_factory=dict)
    # Nodes that fit but scored below the candidates (_narrow_by_score). Left out of the reply: a node
    # kube-scheduler does not get back is not feasible, and a reason per node would be decoded for nothing.
    not_candidates: list[str] = field(default_factory=list)


@dataclass
class EngineStats:
    """Plain counters; the Prometheus collector reads them at scrape time."""

    # Every label value starts at 0 so that dashboards and alerts see the series before the first event.
    filter_rejections: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(REJECTION_REASONS, 0)))
    # conflict-after-bind: the API bound a pod whose reservation had lapsed and whose CUs were taken meanwhile.
    binds: Counter[str] = field(default_factory=lambda: Counter({"ok": 0, "error": 0, "conflict-after-bind": 0}))
    # Input refused for being beyond gpuslice's bounds (core/bounds.py), by the key that carried it.
    refused: Counter[str] = field(default_factory=Counter)
    skipped_nodes: dict[str, str] = field(default_factory=dict)  # node -> inventory problem
    rebuild_problems: list[str] = field(default_factory=list)
    last_sync: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, counter: Counter[str], key: str, n: int = 1) -> None:
        """Add to one of the counters (the server's threads all count)."""
        with self._lock:
            counter[key] += n

    def merge(self, counter: Counter[str], counts: Mapping[str, int]) -> None:
        with self._lock:
            counter.update(counts)

    def refusal(self, exc: InputError) -> None:
        """Count an input error if it is a bound's refusal (not merely malformed input)."""
        if is_refusal(exc.reason):
            self.count(self.refused, refusal_key(exc.key))


Placer = Callable[[SliceRequest, NodeState, Policy], NodeFit]


class Candidates(dict[str, str]):
    """filter's and prioritize's nodes: name -> "" or why the node cannot be used, plus the states of
    nodes known only from the request (never stored in the ledger)."""

    def __init__(self) -> None:
        super().__init__()
        self.transient: dict[str, NodeState] = {}

    def states(self, ledger: Ledger, names: Iterable[str]) -> list[NodeState | None]:
        states = ledger.states(names)
        if self.transient:
            states = [s if s is not None else self.transient.get(n) for n, s in zip(names, states, strict=True)]
        return states


class Engine:
    def __init__(self, cluster: Cluster, policies: PolicyStore, placer: Placer = evaluate,
                 clock: Callable[[], float] = time.monotonic, checker: Placer = check,
                 scorer: Placer = rank, bind_placer: Placer | None = None, scheduler_name: str | None = None) -> None:
        """`placer` chooses GPUs and CUs; `checker` answers filter's yes/no and `scorer` gives
        prioritize's score without choosing CUs. All three must agree on which nodes fit. Bind may
        decide with a costlier `bind_placer` (the CP-SAT solver) that never fails where `placer` fits.
        With `scheduler_name`, bind refuses pods of any other scheduler: the watch follows only that
        one's pods, so another's would hold CUs that no event ever frees."""
        self.cluster = cluster
        self.policies = policies
        self.placer = placer
        self.checker = checker
        self.scorer = scorer
        self.bind_placer = bind_placer
        self.scheduler_name = scheduler_name
        self.clock = clock
        p = policies.current
        self.ledger = Ledger(p.burst.sharedFraction, p.overcommit.memory, clock, Rules.from_policy(p))
        self._ledger_policy = p  # the policy whose burst region, overcommit and fit rules the ledger follows
        self.stats = EngineStats()
        self.claims = ClaimSpecs()  # the ResourceClaims' gpuslice requests (written by kube/claims.py's watch)
        self._pending: OrderedDict[str, PodView] = OrderedDict()
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        self._binding: set[str] = set()  # pod UIDs with a bind in flight (guarded by _pending_lock)
        self._node_sig: dict[str, tuple] = {}
        self._last_expire = 0.0
        # Ledger writes (bind's reserve and commit, watch events, node deletes) hold this shared; the
        # ledger swap of sync() holds it exclusively, so no write lands in a ledger being replaced.
        self._swap = SwapLock()
        # Binds committed since some listing began: sync(since=...) carries over those whose Binding the
        # listing may predate. Sequence numbers, not times: see listing_started().
        self._seq = 0
        self._committed: dict[str, tuple[int, str]] = {}  # uid -> (sequence, node)
        # UIDs of pods deleted while a bind of them was in flight (guarded by _pending_lock): that bind's
        # commit must not revive them. Kept only until the bind ends: a bind begun after the delete cannot
        # commit, its Binding carries the pod's UID as a precondition that the API server then refuses.
        self._gone: set[str] = set()
        self._quota_locks: dict[str, threading.Lock] = {}  # namespace -> its quota's check-and-reserve lock
        # Test hook: called with the name of each bind step ("reserved", "recorded") to inject crashes.
        self.fault: Callable[[str], None] | None = None
        # Called with a node whose capacity came free without a cluster event (an expired reservation,
        # a policy change), so that kube-scheduler can be told to retry (kube/nudge.py).
        self.on_freed: Callable[[str], None] | None = None
        self.synced = False
        self._last_columns: tuple[str, Columns] | None = None  # see _columns()
        self.fragmentation = Fragmentation(p)
        self._last_rises: tuple[tuple, Mapping[str, float]] | None = None  # see rises()
        self._last_scores: tuple[tuple, dict[str, int]] | None = None  # see _narrow_by_score()
        self.score_memo = ScoreMemo()  # rank's GPU scores, kept per request kind until a node's row changes
        policies.on_change(self._policy_changed)

    # --- state from the cluster ----------------------------------------------------------------
    def listing_started(self) -> int:
        """Call before listing pods for a sync(since=...): binds committed from now on are carried over."""
        with self._pending_lock:
            self._seq += 1
            return self._seq

    def sync(self, since: int | None = None) -> list[str]:
        """Rebuild every ledger from the cluster (start-up, or after losing the watch).

        Only bound pods (nodeName set) count: the Binding is the commit point of a bind. A pod that
        carries an assignment but no nodeName (written by some other tool, or by a gpuslice before
        binds became one write) holds nothing, and its next bind overwrites the annotation.
        Reservations of binds in flight in this process are carried over into the new ledger, and so
        are binds committed after the listing began (`since`, from listing_started(); by default the
        listing is this call's own), which the listing may show unbound or not at all."""
        with self._swap.exclusive():
            if since is None:
                since = self.listing_started()
            return self._sync(since)

    def _sync(self, since: int) -> list[str]:
        policy = self.policies.current
        nodes: dict[str, list[GpuInfo]] = {}
        skipped: dict[str, str] = {}
        for view in self.cluster.list_nodes():
            gpus = self._inventory(view, policy, skipped)
            self._node_sig[view.name] = _signature(view)
            if gpus is not None:
                nodes[view.name] = gpus
        bound = []
        problems: list[str] = []
        listed: dict[str, PodView] = {}
        for pod in self.cluster.list_pods():
            listed[pod.uid] = pod
            if pod.terminal or ASSIGNMENT_ANNOTATION not in pod.annotations or not pod.node_name:
                continue
            try:
                a = assignment_in(pod.annotations)
            except AssignmentError as exc:
                self.stats.refusal(exc)
                problems.append(f"pod {pod.key}: {exc}")
                continue
            if a.node != pod.node_name:
                problems.append(f"pod {pod.key}: assignment is for node {a.node}, pod is bound to {pod.node_name}")
                continue
            bound.append((PodRef(pod.uid, pod.namespace, pod.name), a, _millis_of(pod, policy)))
        adopted = self._ledger_policy  # a reload published after this listing began is adopted already
        ledger, conflicts = rebuild(nodes, bound, adopted.burst.sharedFraction, adopted.overcommit.memory,
                                    self.clock, Rules.from_policy(adopted))
        bound_uids = {ref.uid for ref, _, _ in bound}
        now = self.clock()
        with self._pending_lock:
            committed = {uid: seq for uid, (seq, _) in self._committed.items() if seq >= since}
            self._committed = {uid: v for uid, v in self._committed.items() if v[0] >= since}
            gone = set(self._gone)
        for state in self.ledger.nodes():
            for uid, e in state.pods.items():
                if uid in bound_uids or uid in gone:
                    continue
                pod = listed.get(uid)
                if pod is not None and (pod.terminal or (pod.node_name and pod.node_name != state.name)):
                    continue
                if e.reserved:
                    keep = pod is not None and e.expires_at > now
                    ttl = e.expires_at - now if keep else None
                else:  # bound by this process after the listing began: the listing may not show it yet
                    keep, ttl = uid in committed, None
                if not keep:
                    continue
                try:
                    ledger.reserve(e.pod, e.assignment, e.workload_class, e.compute_millis, ttl)
                except LedgerConflict as exc:
                    conflicts.append(f"in-flight bind {e.pod.key}: {exc}")
        self.ledger = ledger
        self.stats.skipped_nodes = skipped
        self.stats.rebuild_problems = problems + conflicts
        self.stats.last_sync = time.time()
        self.synced = True
        for p in self.stats.rebuild_problems:
            log.warning("rebuild: %s", p)
        for t in ledger.incomplete_masks():  # counted, but the hardware leaks: DESIGN hardware rule
            log.warning("rebuild: %s holds a CU mask that is not XCC-complete (legacy); re-create the pod", t)
        return self.stats.rebuild_problems

    def observe_node(self, view: NodeView) -> bool:
        """Add or refresh a node's inventory; False (and a recorded reason) if it is unreadable."""
        with self._swap.shared():
            sig = _signature(view)
            if self._node_sig.get(view.name) == sig:
                known = view.name not in self.stats.skipped_nodes
                if not known or self.ledger.node(view.name) is not None:
                    return known
            self._node_sig[view.name] = sig  # the bad value too: the same bad node is not parsed again
            gpus = self._inventory(view, self.policies.current)
            if gpus is None:
                return False
            self.ledger.set_node(view.name, gpus)
            return True

    def forget_node(self, name: str) -> None:
        with self._swap.shared():
            self.ledger.remove_node(name)
            self._node_sig.pop(name, None)
            self.stats.skipped_nodes.pop(name, None)

    def observe_pod(self, pod: PodView) -> None:
        """A pod changed in the cluster: free its slice if it ended, record it if it is bound."""
        if pod.terminal:
            self.forget_pod(pod.uid)
            return
        if not pod.node_name or ASSIGNMENT_ANNOTATION not in pod.annotations:
            return
        with self._swap.shared():
            self._observe_bound(pod)

    def _observe_bound(self, pod: PodView) -> None:
        with self._pending_lock:  # the cluster shows it bound: any later listing will too
            self._committed.pop(pod.uid, None)
        entry = self.ledger.entry(pod.uid)
        if entry is not None and not entry.reserved:
            if isinstance(pod.annotations, ParsedAnnotations):  # the watch's copy of a slice this bind recorded
                pod.annotations.share(entry.assignment)
            return
        try:
            a = assignment_in(pod.annotations)
            if a.node != pod.node_name:  # a stale annotation on a pod bound by someone else
                log.warning("pod %s: assignment is for node %s, pod is bound to %s; not counted",
                            pod.key, a.node, pod.node_name)
                if entry is not None:
                    self.ledger.release(pod.uid)
                return
            self.ledger.reserve(PodRef(pod.uid, pod.namespace, pod.name), a, a.workload_class,
                                _millis_of(pod, self.policies.current), ttl=None)
        except AssignmentError as exc:
            self.stats.refusal(exc)
            log.warning("pod %s: assignment not recorded: %s", pod.key, exc)
        except LedgerConflict as exc:
            log.warning("pod %s: assignment not recorded: %s", pod.key, exc)

    def forget_pod(self, uid: str) -> None:
        with self._swap.shared():
            with self._pending_lock:
                if uid in self._binding:
                    self._gone.add(uid)
                self._committed.pop(uid, None)
                self._drop_pending(uid)
            self.ledger.release(uid)

    def _inventory(self, view: NodeView, policy: Policy, skipped: dict[str, str] | None = None) -> list[GpuInfo] | None:
        skipped = self.stats.skipped_nodes if skipped is None else skipped
        try:
            gpus = inventory_for_node(view.name, view.labels, view.annotations, view.allocatable, policy)
        except InventoryError as exc:
            self.stats.refusal(exc)
            skipped[view.name] = str(exc)
            log.warning("node %s skipped: %s", view.name, exc)
            return None
        skipped.pop(view.name, None)
        return gpus

    def _policy_changed(self, policy: Policy) -> None:
        # Exclusive: a relist building its ledger under the old policy finishes first, then adopts this one.
        with self._swap.exclusive():
            self._ledger_policy = policy
            if policy.burst.sharedFraction != self.ledger.shared_fraction:
                self.ledger.set_burst_fraction(policy.burst.sharedFraction)
            self.ledger.overcommit = policy.overcommit.memory
            self.ledger.rules = Rules.from_policy(policy)
        # New rules may let a rejected pod fit anywhere; no cluster event says so. Any one node stands
        # for all: kube-scheduler requeues every extender-rejected pod on any Node event.
        if self.on_freed is not None:
            names = self.ledger.node_names()
            if names:
                self.on_freed(names[0])

    # --- verbs ---------------------------------------------------------------------------------
    def request_of(self, pod: PodView, policy: Policy) -> tuple[SliceRequest | None, bool]:
        """The pod's slice request, and whether it is a DRA pod's (read from its gpuslice ResourceClaims,
        engine/dra_requests.py): filter and prioritize judge both kinds by the same fit rule and scores."""
        req = parse_slice_request(pod.labels, pod.annotations, policy)
        if not pod.claims:
            return req, False
        dra = dra_slice_request(self.claims.shares(pod.namespace, pod.claims), policy)
        if dra is None:
            return req, False
        if req is not None:
            raise SliceRequestError("spec.resourceClaims", list(pod.claims), "the pod asks for a slice by gpuslice "
                                    "keys and by a gpuslice ResourceClaim; use one of the two")
        return dra, True

    def filter(self, pod: PodView, nodes: Iterable[NodeView] | None = None,
               names: Iterable[str] | None = None, narrow_candidates: bool = True) -> FilterResult:
        policy = self.policies.current
        self._maybe_expire()
        candidates = self._candidates(nodes, names)
        result = FilterResult()
        try:
            req, dra = self.request_of(pod, policy)
        except SliceRequestError as exc:
            msg = f"gpuslice: {exc}"
            result.unresolvable = {n: msg for n in candidates}
            self.stats.count(self.stats.filter_rejections, "invalid-request", len(candidates))
            self.stats.refusal(exc)
            return result
        except ClaimNotSeen as exc:  # not unresolvable: kube-scheduler tries the pod again later
            result.failed = {n: f"gpuslice: {exc}" for n in candidates}
            self.stats.count(self.stats.filter_rejections, "claim-not-seen", len(candidates))
            return result
        # Remember every pod filter saw (pass-through ones too): bind gets only names and a UID, and
        # the pod may not be readable from the cluster yet (or at all, in the demo).
        self._remember(pod)
        if req is None:
            result.passed = list(candidates)
            if policy.scoring.fragmentation.enabled and result.passed:  # its host share still strands GPUs
                self._narrow(pod, req, policy, result, "", narrow_candidates)
            return result
        self.observe_request(pod, req, policy)
        quota = self._quota_problem(pod, req, policy)
        if quota:
            result.failed = {n: quota for n in candidates}
            self.stats.count(self.stats.filter_rejections, "quota", len(candidates))
            return result
        # The hot path (thousands of nodes per call): one memo key per request, locals for lookups,
        # rejection counts merged once at the end.
        key = "check|" + fit_key(req, policy)
        uid = pod.uid
        passed, failed = result.passed, result.failed
        rejected: Counter[str] = Counter()
        names = list(candidates)
        # Columns need GPU rows (none before the first sync or in a cluster without GPU nodes).
        columns = nodes is None and self.checker is check and self.ledger.gpu_index.used > 0
        late = False  # some node passed out of request order
        room = None  # host room of the nodes passed by the columns, from that of every candidate
        if columns:
            # Columns answer for every node; only the nodes they cannot pass go the per-node way below.
            ledger = self.ledger
            cols = self._columns(req, policy, key)
            slots, layout = cols.slots(names)
            fits = cols.node_fits(slots)
            slow_mask = slots < 0  # not in the index; below: unreadable inventory, or the pod's own node
            if self.stats.skipped_nodes:
                slow_mask |= np.fromiter((bool(candidates[n]) for n in names), np.bool_, len(names))
            mine = ledger.node_of(uid)
            if mine is not None and mine in candidates:
                slow_mask[names.index(mine)] = True
            fast_fail = ~fits & ~slow_mask
            fast_pass = fits & ~slow_mask
            passed.extend(compress(names, fast_pass.tolist()))
            if policy.scoring.fragmentation.enabled and isinstance(self.cluster, HostRoom):
                # asked about the same list for every pod (cluster.host_free remembers it), unlike the nodes passed
                cpu_all, mem_all = self.cluster.host_free(names)
                room = (cpu_all[fast_pass], mem_all[fast_pass])
            # Failing nodes are worded from their rows: per distinct message, not per node, and no
            # per-node memo (reading thousands of memos cost more than wording from the rows).
            failing = list(compress(names, fast_fail.tolist()))
            reasons, categories, unsaid = cols.rejections(slots[fast_fail], prefix="gpuslice: ")
            if unsaid.any():  # a node with no GPUs: the per-node path words it
                said = ~unsaid
                slow_mask[np.flatnonzero(fast_fail)[unsaid]] = True
                failing = list(compress(failing, said.tolist()))
                reasons = list(compress(reasons, said.tolist()))
                categories = categories[said]
            failed.update(zip(failing, reasons, strict=True))
            for code, n in enumerate(np.bincount(categories, minlength=len(CATEGORIES)).tolist()):
                if n:
                    rejected[CATEGORIES[code] or "no-gpus"] += n
            slow = list(compress(names, slow_mask.tolist()))
            names = slow
        for name, state in zip(names, candidates.states(self.ledger, names), strict=True):
            problem = candidates[name]
            if problem:
                failed[name] = problem
                rejected["inventory"] += 1
                continue
            if state is None:
                failed[name] = "gpuslice: node has no GPU inventory known to gpuslice yet"
                rejected["unknown-node"] += 1
                continue
            if uid in state.pods:
                state = state.without(uid)
            fit = state.memo.get(key)
            if fit is None:
                fit = self._memoize(state, key, self.checker(req, state, policy))
            if fit.ok:  # type: ignore[attr-defined]
                passed.append(name)
                late = columns
            else:
                failed[name] = f"gpuslice: {fit.reason}"  # type: ignore[attr-defined]
                rejected[fit.category] += 1  # type: ignore[attr-defined]
        if late and len(passed) > 1:
            order = {n: i for i, n in enumerate(candidates)}  # a node passed the slow way: keep request order
            passed.sort(key=order.__getitem__)
        elif columns and len(passed) > 1:
            # prioritize is asked about exactly the nodes that passed: their slots are known already.
            cols.index.remember_slots(passed, slots[fast_pass], layout)
        if dra and passed:
            self._allocator_guard(req, policy, candidates, result, rejected)
        if policy.scoring.fragmentation.enabled and result.passed:  # rises() keys on fit_key, as prioritize does
            same = room is not None and not dra and len(passed) == len(room[0])  # passed: the columns' nodes only
            self._narrow(pod, req, policy, result, key.removeprefix("check|"), narrow_candidates,
                         room if same else None)
        elif policy.scoring.candidates.enabled and narrow_candidates and len(result.passed) > 1:
            self._narrow_by_score(pod, req, policy, result)
        self.stats.merge(self.stats.filter_rejections, rejected)
        return result

    def _allocator_guard(self, req: SliceRequest, policy: Policy, candidates: Candidates, result: FilterResult,
                         rejected: Counter[str]) -> None:
        """A DRA pod's GPU is picked by kube-scheduler's DRA allocator, which knows capacity only: fail
        the passing nodes where it could pick a GPU the class rules forbid (engine/dra_requests.py)."""
        kept = []
        for name, state in zip(result.passed, candidates.states(self.ledger, result.passed), strict=True):
            risk = allocator_may_break_rules(req, state, policy) if state is not None else None
            if risk is None:
                kept.append(name)
                continue
            result.failed[name] = (f"gpuslice: {risk[1]}, and kube-scheduler's DRA allocator, which picks the GPU, "
                                   "could choose it")
            rejected[risk[0]] += 1
        result.passed[:] = kept

    def observe_request(self, pod: PodView, req: SliceRequest, policy: Policy) -> None:
        """Count the pod (once) in the workload mix fragmentation scoring learns from."""
        if policy.scoring.fragmentation.enabled:
            self.fragmentation.observe(pod.uid, req, pod.cpu_millis, pod.memory_bytes, policy)

    def _narrow(self, pod: PodView, req: SliceRequest | None, policy: Policy, result: FilterResult, key: str,
                narrow_candidates: bool, host: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Record each passing node's rise; with `scoring.candidates`, fail the nodes that are not candidates.
        `host`: the passing nodes' host room, if known."""
        names = result.passed
        rises = self.rises(pod, req, policy, names, key, host=host)
        known = ~np.isnan(rises)
        result.rises = NamedRises(names, rises)
        cand = policy.scoring.candidates
        if not (cand.enabled and narrow_candidates):
            return
        within = within_tolerance(rises, cand.tolerance, cand.minNodes)
        drop = known & ~at_most_mask(rises, within, names, cand.maxNodes, pod.uid)
        if not drop.any():
            return
        best = float(rises[known].min())
        result.passed = list(compress(names, (~drop).tolist()))
        last = self._last_rises  # set by rises() above; prioritize asks about the candidates: theirs are reused
        if last is not None and last[0][:2] == (pod.uid, key):
            self._last_rises = (last[0], NamedRises(result.passed, rises[~drop], unknown=True))
        capped = f"gpuslice: as good as the candidates, but filter passes at most {cand.maxNodes} nodes " \
                 "(scoring.candidates.maxNodes)"
        # worded once per distinct rise, not once per node
        values, which = np.unique(rises[drop], return_inverse=True)
        words = [f"gpuslice: placing here adds {v - best:.3f} GPUs of expected fragmentation more than the best "
                 f"node (tolerance {cand.tolerance:g})" for v in values.tolist()]
        reasons = [capped if w else words[i] for i, w in zip(which.tolist(), within[drop].tolist(), strict=True)]
        result.failed.update(zip(compress(names, drop.tolist()), reasons, strict=True))
        self.stats.count(self.stats.filter_rejections, "fragmentation", int(drop.sum()))

    def _narrow_by_score(self, pod: PodView, req: SliceRequest, policy: Policy, result: FilterResult) -> None:
        """`scoring.candidates` without fragmentation scoring: pass only the nodes whose prioritize score
        (the policy's strategy, 0..10) is within `tolerance` x 10 points of the best, and at least the
        `minNodes` best (ties included; the same rule as fragmentation's, engine/fragmentation.narrow).
        kube-scheduler then scores, and asks prioritize about, only those; prioritize reuses these scores."""
        cand = policy.scoring.candidates
        names = result.passed
        ranks = None
        if self.scorer is rank and self.ledger.gpu_index.used > 0:  # the scores before rounding
            scores = self._column_scores(pod, req, policy, names, fit_key(req, policy))
            ranks = self._name_ranks(names)
        else:
            scores = np.array([v for _, v in self.prioritize(pod, names=names)], np.float64)
        keep = candidate_mask(10.0 - scores, names, 10 * cand.tolerance, cand.minNodes, cand.maxNodes, pod.uid,
                              ranks)
        flags = keep.tolist()
        result.passed = list(compress(names, flags))
        result.not_candidates = list(compress(names, (~keep).tolist()))
        # prioritize is asked about the candidates only: their rounded scores are its answer
        self._last_scores = (self._scores_key(pod, req, policy),
                             dict(zip(result.passed, np.rint(scores[keep]).astype(int).tolist(), strict=True)))
        self.stats.count(self.stats.filter_rejections, "candidates", len(result.not_candidates))

    def _name_ranks(self, names: list[str]) -> np.ndarray | None:
        """Each node's rank in name order, from the GPU index (None if one is not in it, or its layout
        changed meanwhile): the candidate cap orders tied nodes by it instead of by their names."""
        index = self.ledger.gpu_index
        found = index.slots_of(names)  # remembered: filter looked these names up just before
        ranks = index.name_ranks(found.layout)
        if ranks is None or not len(found.slots) or found.slots.min() < 0 or found.slots.max() >= len(ranks):
            return None
        return ranks[found.slots]

    def _scores_key(self, pod: PodView, req: SliceRequest, policy: Policy) -> tuple:
        """What prioritize's scores depend on: the pod, its request under this policy, the ledger's state."""
        return (pod.uid, fit_key(req, policy), self.ledger.gpu_index.writes)

    def rises(self, pod: PodView, req: SliceRequest | None, policy: Policy, names: list[str], key: str,
              reuse: bool = False, host: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Per node: how much its best placement raises the expected fragmentation (+inf: no fit, NaN:
        not in the GPU index). A pod without GPUs raises it only by the host CPU and memory it takes."""
        # prioritize (`reuse`) asks right after filter about the nodes that passed: filter's answers are
        # reused while the index, the mix and the pod are the same (as _columns reuses columns)
        memo_key = (pod.uid, key, self.fragmentation.mix.version, self.ledger.gpu_index.writes)
        last = self._last_rises
        if reuse and last is not None and last[0] == memo_key:
            known = last[1]
            if all(n in known for n in names):
                return np.array([known[n] for n in names], np.float64)
        out = self._rises(pod, req, policy, names, key, host)
        self._last_rises = (memo_key, NamedRises(names, out, unknown=True))
        return out

    def _rises(self, pod: PodView, req: SliceRequest | None, policy: Policy, names: list[str], key: str,
               host: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        if host is None and isinstance(self.cluster, HostRoom):
            host = self.cluster.host_free(names)
        if req is None:
            cols = self._columns(PASS_THROUGH, policy, "host")
            return self.fragmentation.host_rises(policy, cols, cols.slots(names).slots, host, pod.cpu_millis,
                                                 pod.memory_bytes)
        cols = self._columns(req, policy, "check|" + key)
        slots = cols.slots(names).slots
        return self.fragmentation.rises(req, policy, cols, slots, host, pod.cpu_millis, pod.memory_bytes)

    def prioritize(self, pod: PodView, nodes: Iterable[NodeView] | None = None,
                   names: Iterable[str] | None = None) -> list[tuple[str, int]]:
        policy = self.policies.current
        candidates = self._candidates(nodes, names)
        try:
            req, _ = self.request_of(pod, policy)
        except (SliceRequestError, ClaimNotSeen):
            return [(n, 0) for n in candidates]
        if req is None and not policy.scoring.fragmentation.enabled:
            return [(n, NEUTRAL_SCORE) for n in candidates]
        key = fit_key(req, policy) if req is not None else ""
        if policy.scoring.fragmentation.enabled:
            names_ = list(candidates)
            rises = self.rises(pod, req, policy, names_, key, reuse=True)
            if req is not None and policy.scoring.fragmentation.prioritize == "packing":
                cols = self._columns(req, policy, "check|" + key)
                full = self.fragmentation.packing(req, cols, cols.slots(names_).slots).tolist()
                return [(n, 0 if r == float("inf") else round(10 * f) if f == f else NEUTRAL_SCORE)
                        for n, r, f in zip(names_, rises.tolist(), full, strict=True)]
            # rint rounds half to even, as round() did
            scores = np.where(np.isnan(rises), NEUTRAL_SCORE,
                              np.where(np.isinf(rises), 0, np.rint(10 * rise_scores(rises)))).astype(np.int64)
            return list(zip(names_, scores.tolist(), strict=True))
        last = self._last_scores
        if last is not None and nodes is None and last[0] == self._scores_key(pod, req, policy):
            known = last[1]  # filter narrowed by these very scores (_narrow_by_score)
            if all(n in known for n in candidates):
                return [(n, known[n]) for n in candidates]
        if nodes is None and self.scorer is rank and self.ledger.gpu_index.used > 0:
            return self._prioritize_columns(pod, req, policy, list(candidates), key)
        out: list[tuple[str, int]] = []
        for name, state in zip(candidates, candidates.states(self.ledger, candidates), strict=True):
            if state is None:
                out.append((name, 0))
                continue
            if pod.uid in state.pods:
                state = state.without(pod.uid)
            out.append((name, self._score(req, state, policy, key)))
        return out

    def _prioritize_columns(self, pod: PodView, req: SliceRequest, policy: Policy, names: list[str],
                            key: str) -> list[tuple[str, int]]:
        """prioritize from the GPU index: `rank`'s score for every node at once."""
        scores = self._column_scores(pod, req, policy, names, key).tolist()
        return [(n, round(v)) for n, v in zip(names, scores, strict=True)]

    def _column_scores(self, pod: PodView, req: SliceRequest, policy: Policy, names: list[str],
                       key: str) -> np.ndarray:
        """`rank`'s score of every node from the GPU index, 0..10 before prioritize rounds it, in the order
        of `names`."""
        ledger = self.ledger
        cols = self._columns(req, policy, "check|" + key)
        slots = cols.slots(names).slots
        scores, exact = self.score_memo.gpu_scores(cols, key, slots)
        slow = np.nonzero(exact)
        names_of = {slot: name for name, slot in list(cols.table.slots.items())} if len(slow[0]) else {}
        for slot, pos in zip(*slow, strict=True):  # rare: scored the slow way
            state = ledger.node(names_of.get(int(slot), ""))
            gpu = state.gpus[pos] if state is not None and pos < len(state.gpus) else None
            value = exact_gpu_score(req, policy, gpu) if gpu is not None else None
            scores[slot, pos] = np.nan if value is None else value
        best = node_scores(cols, scores)
        node_best = np.where(slots >= 0, np.take(best, slots, mode="clip"), np.nan)
        fine = np.where(np.isnan(node_best), 0.0, np.clip(np.nan_to_num(node_best) * 10, 0, 10))
        mine = ledger.node_of(pod.uid)
        if mine is not None and mine in names:  # the pod holds a slice there: score it as if freed
            state = ledger.node(mine)
            if state is not None:
                fine[names.index(mine)] = self._score(req, state.without(pod.uid), policy, key)
        return fine

    def _score(self, req: SliceRequest, state: NodeState, policy: Policy, key: str) -> int:
        """The scorer's 0..10 score for this exact (immutable) node state, memoised on it."""
        fit = state.memo.get("rank|" + key)
        if fit is None:
            fit = self._memoize(state, "rank|" + key, self.scorer(req, state, policy))
        return to_score(fit)  # type: ignore[arg-type]

    def _columns(self, req: SliceRequest, policy: Policy, key: str) -> Columns:
        """The request's columns; prioritize reuses filter's when no write to the index came between."""
        index = self.ledger.gpu_index
        last = self._last_columns
        if last is not None and last[0] == key and last[1].index is index and last[1].quiet():
            return last[1]
        cols = Columns(req, policy, index)
        self._last_columns = (key, cols)
        return cols

    def bind(self, namespace: str, name: str, uid: str, node: str) -> str:
        """Reserve the slice, record the assignment and the binding in the cluster; roll back on any
        failure. Returns "" on success, else the error for kube-scheduler."""
        try:
            self._bind(namespace, name, uid, node)
        except BindError as exc:
            self.stats.count(self.stats.binds, "error")
            return str(exc)
        self.stats.count(self.stats.binds, "ok")
        return ""

    def _bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        # kube-scheduler retries a bind that timed out, maybe to another node, while the first may still
        # be running; two binds of one pod at once could each undo the other's slice.
        with self._pending_lock:
            if uid in self._binding:
                raise BindError(f"gpuslice: pod {namespace}/{name}: a bind is already in flight", temporary=True)
            self._binding.add(uid)
        try:
            self._bind_once(namespace, name, uid, node)
        except LockTimeout as exc:
            raise BindError(f"gpuslice: pod {namespace}/{name}: {exc}; try again", temporary=True) from None
        finally:
            with self._pending_lock:
                self._binding.discard(uid)
                deleted = uid in self._gone
                self._gone.discard(uid)
            if deleted:  # a reservation made after the delete (one left for a lost answer too) is nobody's
                with self._swap.shared():
                    self.ledger.release(uid)

    def _bind_once(self, namespace: str, name: str, uid: str, node: str) -> None:
        policy = self.policies.current
        done = self.ledger.entry(uid)
        if done is not None and not done.reserved:
            # Bound already (kube-scheduler retrying a bind whose answer it lost): replacing the entry
            # would lose that slice.
            if done.assignment.node == node:
                return
            raise BindError(f"gpuslice: pod {namespace}/{name} is already bound to {done.assignment.node}")
        pod = self._lookup(namespace, name, uid)
        if self.scheduler_name is not None and (pod.scheduler_name or DEFAULT_SCHEDULER) != self.scheduler_name:
            raise BindError(f"gpuslice: pod {pod.key} has schedulerName {pod.scheduler_name or DEFAULT_SCHEDULER!r}; "
                            f"this extender binds only {self.scheduler_name!r} pods (the only ones its watch follows)")
        try:
            req, dra = self.request_of(pod, policy)
        except SliceRequestError as exc:
            self.stats.refusal(exc)
            raise BindError(f"gpuslice: {exc}") from None
        except ClaimNotSeen as exc:
            raise BindError(f"gpuslice: {exc}", temporary=True) from None
        if req is None or dra:  # a DRA pod's share is its claim's: kube-scheduler allocated it, the agent prepares it
            self.cluster.bind_pod(pod, node, {})
            self._forget_pending(uid)
            return
        ref = PodRef(uid, namespace, name)
        assignment = self._reserve(pod, req, policy, ref, node)
        self._step("reserved")
        try:
            self.cluster.bind_pod(pod, node, {ASSIGNMENT_ANNOTATION: assignment.to_json()})
        except BindError as exc:
            if not exc.outcome_unknown:  # else keep the CUs until the watch shows the pod bound or the TTL ends
                self._release(uid, assignment)
            raise
        except Exception as exc:  # the cluster adapter failed unexpectedly: still roll back
            self._release(uid, assignment)
            raise BindError(f"gpuslice: recording the bind failed: {exc}", temporary=True) from exc
        self._step("recorded")
        self._commit(ref, assignment, req)
        self._forget_pending(uid)

    def _reserve(self, pod: PodView, req: SliceRequest, policy: Policy, ref: PodRef, node: str) -> Assignment:
        """The namespace's quota check and the reservation, as one critical section."""
        quota_lock = self._quota_lock(pod.namespace) if pod.namespace in policy.quotas else None
        try:
            with self._swap.shared(LOCK_WAIT):
                if quota_lock is not None and not quota_lock.acquire(timeout=LOCK_WAIT):
                    raise LockTimeout(f"namespace {pod.namespace}'s quota is busy")
                try:
                    quota = self._quota_problem(pod, req, policy)
                    if quota:
                        raise BindError(quota)
                    with self.ledger.locked(node) as state:
                        base = state.without(ref.uid)
                        fit = self._bind_fit(req, base, policy, pod)
                        if not fit.ok:
                            raise BindError(f"gpuslice: node {node}: {fit.reason}")
                        assignment = build_assignment(req, node, fit.choices, policy)
                        self.ledger.reserve(ref, assignment, req.workload_class, req.compute_millis,
                                            ttl=policy.reservations.ttlSeconds)
                    return assignment
                finally:
                    if quota_lock is not None:
                        quota_lock.release()
        except LedgerConflict as exc:
            raise BindError(f"gpuslice: node {node}: {exc}", temporary=True) from None

    def _commit(self, ref: PodRef, assignment: Assignment, req: SliceRequest) -> None:
        """The Binding is written: the reservation becomes the pod's slice, in whichever ledger is current."""
        uid = ref.uid
        with self._swap.shared():
            with self._pending_lock:
                if uid in self._gone:  # deleted while its Binding was written: nothing to hold
                    revived = False
                else:
                    self._seq += 1
                    self._committed[uid] = (self._seq, assignment.node)
                    revived = True
            if not revived:
                self.ledger.release(uid, assignment)
                return
            if self.ledger.commit(uid, assignment):
                return
            # The reservation expired or a retried bind replaced it while the API call ran; the
            # cluster now runs the pod with this assignment, and the cluster is the source of truth.
            try:
                self.ledger.reserve(ref, assignment, req.workload_class, req.compute_millis, ttl=None)
            except LedgerConflict as exc:
                self.stats.count(self.stats.binds, "conflict-after-bind")
                log.error("pod %s bound to %s but its slice now conflicts: %s", ref.key, assignment.node, exc)

    def _release(self, uid: str, assignment: Assignment) -> None:
        with self._swap.shared():
            self.ledger.release(uid, assignment)

    def _quota_lock(self, namespace: str) -> threading.Lock:
        with self._pending_lock:
            return self._quota_locks.setdefault(namespace, threading.Lock())

    def _bind_fit(self, req: SliceRequest, base: NodeState, policy: Policy, pod: PodView) -> NodeFit:
        if policy.scoring.fragmentation.enabled:  # the GPUs whose rise filter and prioritize scored
            host = self.cluster.host_free([base.name]) if isinstance(self.cluster, HostRoom) else None
            keys = list(self.ledger.gpu_index.model_keys)
            return self.fragmentation.choose(req, base, policy, keys, host, pod.cpu_millis, pod.memory_bytes)
        return self.bind_placer(req, base, policy) if self.bind_placer else self._fit(req, base, policy)

    def _forget_pending(self, uid: str) -> None:
        with self._pending_lock:
            self._drop_pending(uid)

    def preempt(self, pod: PodView, victims: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """kube-scheduler proposes, per node, the pods (UIDs) it would evict for `pod`. Keep the nodes
        where the slice fits once those victims' slices are freed, trimmed to the GPU-holding victims
        the slice needs; gpuslice never adds victims (see engine/preemption.py)."""
        policy = self.policies.current
        try:
            req, _ = self.request_of(pod, policy)
        except (SliceRequestError, ClaimNotSeen):
            return {}  # the pod cannot run anywhere until its request is fixed; evicting helps nobody
        states = {n: self.ledger.node(n) for n in victims}
        kept = preempt(req, states, {n: Victims(tuple(uids)) for n, uids in victims.items()}, pod.uid, policy,
                       self.checker)
        return {n: list(v.uids) for n, v in kept.items()}

    def _step(self, name: str) -> None:
        if self.fault is not None:
            self.fault(name)

    def assignment_for(self, uid: str) -> Assignment | None:
        entry = self.ledger.entry(uid)
        return entry.assignment if entry else None

    # --- helpers -------------------------------------------------------------------------------
    def _candidates(self, nodes: Iterable[NodeView] | None, names: Iterable[str] | None) -> Candidates:
        """Node name -> "" or the reason it cannot be used. In the `Nodes` form, a node the cluster has
        not told us of is judged from the request's Node object, bounded, and never stored: only the
        cluster's objects set the ledger's inventory."""
        out = Candidates()
        skipped_nodes = self.stats.skipped_nodes
        if nodes is not None:
            policy = self.policies.current
            for view in nodes:
                name = view.name
                if self.ledger.node(name) is not None or name in skipped_nodes:
                    skipped = skipped_nodes.get(name)
                    out[name] = f"gpuslice: inventory: {skipped}" if skipped else ""
                    continue
                try:
                    gpus = inventory_for_node(name, view.labels, view.annotations, view.allocatable, policy)
                except InventoryError as exc:
                    self.stats.refusal(exc)
                    out[name] = f"gpuslice: inventory: {exc}"
                    continue
                fraction = self.ledger.shared_fraction
                out.transient[name] = NodeState(name, tuple(GpuState(g, burst_region(g, fraction)) for g in gpus))
                out[name] = ""
            return out
        if not skipped_nodes:
            return Candidates.fromkeys(names or (), "")
        for name in names or ():
            skipped = skipped_nodes.get(name)
            out[name] = f"gpuslice: inventory: {skipped}" if skipped else ""
        return out

    def _fit(self, req: SliceRequest, state: NodeState, policy: Policy, key: str | None = None) -> NodeFit:
        """The placer's answer for this exact (immutable) node state, memoised on it: filter, prioritize
        and bind of one pod, and pods of the same shape, evaluate a node once."""
        key = "place|" + (key or fit_key(req, policy))
        fit = state.memo.get(key)
        if fit is None:
            fit = self._memoize(state, key, self.placer(req, state, policy))
        return fit  # type: ignore[return-value]

    @staticmethod
    def _memoize(state: NodeState, key: str, fit: NodeFit) -> NodeFit:
        if len(state.memo) >= MEMO_LIMIT:
            state.memo.clear()
        state.memo[key] = fit
        return fit

    def _remember(self, pod: PodView) -> None:
        size = _text_size(pod)
        with self._pending_lock:
            self._drop_pending(pod.uid)
            self._pending[pod.uid] = pod
            self._pending_bytes += size
            while len(self._pending) > PENDING_CACHE or self._pending_bytes > PENDING_BYTES:
                _, old = self._pending.popitem(last=False)
                self._pending_bytes -= _text_size(old)

    def _drop_pending(self, uid: str) -> None:
        """Caller holds _pending_lock."""
        old = self._pending.pop(uid, None)
        if old is not None:
            self._pending_bytes -= _text_size(old)

    def _lookup(self, namespace: str, name: str, uid: str) -> PodView:
        """The pod to bind: the cluster's own copy when it has one, else the one filter saw, and only if
        filter saw this very pod (a filter body is anyone's to write, UID included)."""
        pod = self.cluster.pod_by_uid(uid)
        if pod is None:
            with self._pending_lock:
                pod = self._pending.get(uid)
            if pod is not None and (pod.namespace, pod.name) != (namespace, name):
                pod = None
        if pod is None:
            pod = self.cluster.get_pod(namespace, name)
        if pod is None:
            raise BindError(f"gpuslice: pod {namespace}/{name} not found")
        if pod.uid != uid or (pod.namespace, pod.name) != (namespace, name):
            raise BindError(f"gpuslice: pod {namespace}/{name} has uid {pod.uid}, not {uid} (recreated?)")
        return pod

    def _quota_problem(self, pod: PodView, req: SliceRequest, policy: Policy) -> str:
        quota = policy.quotas.get(pod.namespace)
        if quota is None:
            return ""
        used = self.ledger.usage(pod.namespace)
        entry = self.ledger.entry(pod.uid)
        if entry is not None:  # a repeated request for a pod already counted
            used.compute_millis -= entry.compute_millis * len(entry.assignment.gpus)
            used.memory -= sum(g.memoryBytes for g in entry.assignment.gpus)
            used.tenants -= 1
        ns = pod.namespace
        if quota.maxTenants is not None and used.tenants + 1 > quota.maxTenants:
            return f"gpuslice: namespace {ns} quota: {used.tenants} of {quota.maxTenants} GPU tenants in use"
        if quota.maxCompute is not None and used.compute_millis + req.compute_millis * req.count > quota.maxCompute:
            return (f"gpuslice: namespace {ns} quota: compute {used.compute_millis}m + "
                    f"{req.compute_millis * req.count}m > {quota.maxCompute}m")
        if quota.maxMemory is not None and used.memory + req.memory_bytes * req.count > quota.maxMemory:
            return (f"gpuslice: namespace {ns} quota: memory {used.memory} + {req.memory_bytes * req.count} "
                    f"bytes > {quota.maxMemory}")
        return ""

    def _maybe_expire(self) -> None:
        now = self.clock()
        if now - self._last_expire >= 1.0:
            self._last_expire = now
            self.expire_reservations()

    def expire_reservations(self) -> int:
        """Drop reservations whose bind never completed; each node that got capacity back goes to
        `on_freed` (no cluster event tells kube-scheduler about it)."""
        freed: set[str] = set()
        n = self.ledger.expire(on_node=freed.add)
        if n:
            log.warning("%d reservation(s) expired without a bind", n)
        if self.on_freed is not None:
            for node in sorted(freed):
                self.on_freed(node)
        return n


def _signature(view: NodeView) -> tuple:
    return (view.annotations.get(INVENTORY_ANNOTATION), view.labels.get(LABEL_CU_COUNT),
            view.labels.get(LABEL_VRAM), view.labels.get(LABEL_PRODUCT), view.allocatable.get(RESOURCE_AMD_GPU))


def _text_size(pod: PodView) -> int:
    """What a cached pod view holds beyond its fixed fields: its label and annotation text."""
    return (sum(len(k) + len(v) for k, v in pod.labels.items())
            + sum(len(k) + len(v) for k, v in pod.annotations.items()) + 256)


def _millis_of(pod: PodView, policy: Policy) -> int:
    try:
        req = parse_slice_request(pod.labels, pod.annotations, policy)
    except SliceRequestError:
        return 0
    return req.compute_millis if req else 0
