"""The extender side of preemption: given kube-scheduler's candidate nodes and victims, keep the
nodes where evicting the victims makes the GPU slice fit, with as few GPU-holding victims as it needs.

kube-scheduler chose every victim for its own filters (CPU, memory, ports...), which know nothing of
GPU slices. So victims that hold no slice on the node are kept as given, and only victims holding a
slice are trimmed: each one, most important first (kube-scheduler's order), is spared if the slice
still fits without evicting it. A node whose victim list would end up empty keeps its original
victims — kube-scheduler rejects an extender answer with an empty victim list for a node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from extender.core.ledger import NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest
from extender.engine.placement import NodeFit


@dataclass(frozen=True)
class Victims:
    uids: tuple[str, ...]  # kube-scheduler's order: most important first


Fit = Callable[[SliceRequest, NodeState, Policy], NodeFit]


def _state_without(state: NodeState, uids: Sequence[str]) -> NodeState:
    for uid in uids:
        state = state.without(uid)
    return state


def trim_victims(req: SliceRequest, state: NodeState, victims: Victims, pod_uid: str, policy: Policy,
                 fit: Fit) -> Victims | None:
    """The victims this node needs for the slice, or None if even evicting all of them is not enough."""
    base = state.without(pod_uid)
    gpu_victims = [u for u in victims.uids if u in base.pods]
    if not fit(req, _state_without(base, gpu_victims), policy).ok:
        return None
    evicted = list(gpu_victims)
    for uid in gpu_victims:  # most important first: spare it if the slice fits anyway
        trial = [u for u in evicted if u != uid]
        if fit(req, _state_without(base, trial), policy).ok:
            evicted = trial
    keep = set(evicted)
    trimmed = tuple(u for u in victims.uids if u not in base.pods or u in keep)
    return Victims(trimmed) if trimmed else victims


def preempt(req: SliceRequest | None, states: Mapping[str, NodeState | None], candidates: Mapping[str, Victims],
            pod_uid: str, policy: Policy, fit: Fit) -> dict[str, Victims]:
    """Filter and trim kube-scheduler's candidates. `req` None (no slice asked) keeps them all."""
    if req is None:
        return dict(candidates)
    out: dict[str, Victims] = {}
    for node, victims in candidates.items():
        state = states.get(node)
        if state is None:
            continue
        trimmed = trim_victims(req, state, victims, pod_uid, policy, fit)
        if trimmed is not None:
            out[node] = trimmed
    return out
