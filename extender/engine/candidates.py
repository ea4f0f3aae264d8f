"""How many candidate nodes filter passes: the cap on `scoring.candidates` (`maxNodes`).

Nodes whose scores tie exactly are interchangeable to the extender, yet on a fleet of identical nodes
nearly all of them tie (every empty node scores alike), so `engine/fragmentation.narrow` alone passes
nearly every node and kube-scheduler decodes, scores and sends back to prioritize a thousand names per
pod. The cap keeps the `maxNodes` best; of the nodes tied at the cut, `tied_pick` takes a run of
consecutive ones in name order, starting where a stable hash of the pod's UID points: deterministic
(the same pod gets the same candidates from every replica and every retry, whatever order
kube-scheduler lists the nodes in), and different pods get different tied nodes, so a burst of pods
does not pile onto the same few nodes while their informer state catches up. (A hash per node would
cost a Python call per tied node, ~1,000 per pod on an empty fleet; this costs one sort.)

`at_most` is the rule; `candidate_mask` is filter's numpy form of `narrow` (whose cut it takes from
`engine/fragmentation.candidate_mask`) followed by `at_most`,
property-tested against them (tests/engine/test_candidates_cap.py). Given each node's rank in name
order (the GPU index keeps one per node), the masks order the tied nodes by it instead of sorting
their names: the same pick (`tied_pick_ranked`), without a Python call per tied node.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from extender.engine.fragmentation import candidate_mask as within_tolerance

K = TypeVar("K", bound=Hashable)


def tied_pick(pod_uid: str, tied: Sequence[str], need: int) -> list[int]:
    """Positions in `tied` (node names, in any order) of the `need` this pod takes: sorted by name,
    a run of `need` from the position a stable hash of the pod's UID gives (wrapping around)."""
    order = sorted(range(len(tied)), key=tied.__getitem__)
    start = zlib.crc32(pod_uid.encode()) % len(order)
    return [order[(start + i) % len(order)] for i in range(need)]


def tied_pick_ranked(pod_uid: str, ranks: np.ndarray, need: int) -> np.ndarray:
    """`tied_pick` for tied nodes given by their ranks in name order (distinct integers, ordered as
    the names are) rather than their names: the same positions."""
    order = np.argsort(ranks, kind="stable")
    start = zlib.crc32(pod_uid.encode()) % len(order)
    return order[(start + np.arange(need)) % len(order)]


def at_most(values: Mapping[K, float], keep: set[K], max_nodes: int | None, pod_uid: str,
            label: Callable[[K], str] = str) -> set[K]:
    """The `max_nodes` of `keep` with the lowest `values` (a rise, or 10 minus a score); of those tied
    at the cut, `tied_pick`'s. `keep` itself when it is no larger or there is no cap. `label` maps keys
    that are not node names (the simulator's node indices) to node names."""
    if max_nodes is None or len(keep) <= max_nodes:
        return keep
    edge = sorted(values[k] for k in keep)[max_nodes - 1]
    out = {k for k in keep if values[k] < edge}
    tied = [k for k in keep if values[k] == edge]
    return out | {tied[i] for i in tied_pick(pod_uid, [label(k) for k in tied], max_nodes - len(out))}


def candidate_mask(values: np.ndarray, names: Sequence[str], tolerance: float, min_nodes: int,
                   max_nodes: int | None, pod_uid: str, ranks: np.ndarray | None = None) -> np.ndarray:
    """Per node of `names`: is it a candidate, i.e. in `at_most(values, narrow(values, tolerance,
    min_nodes), max_nodes, pod_uid)` — in numpy but for the names of the nodes tied at the cap
    (or, given `ranks`, each node's rank in name order, in numpy throughout)."""
    return at_most_mask(values, within_tolerance(values, tolerance, min_nodes), names, max_nodes, pod_uid, ranks)


def at_most_mask(values: np.ndarray, keep: np.ndarray, names: Sequence[str], max_nodes: int | None,
                 pod_uid: str, ranks: np.ndarray | None = None) -> np.ndarray:
    """`at_most` on masks: of the nodes `keep` marks, the `max_nodes` with the lowest `values`.
    `ranks`: per node of `names`, its rank in name order, if known."""
    if max_nodes is None or int(keep.sum()) <= max_nodes:
        return keep
    kept = np.flatnonzero(keep)
    edge = float(np.partition(values[kept], max_nodes - 1)[max_nodes - 1])  # the cap's last value
    out = np.zeros(values.size, dtype=bool)
    below = kept[values[kept] < edge]
    out[below] = True
    tied = kept[values[kept] == edge]
    need = max_nodes - below.size
    if ranks is not None:
        out[tied[tied_pick_ranked(pod_uid, ranks[tied], need)]] = True
        return out
    picked = tied_pick(pod_uid, [names[i] for i in tied.tolist()], need)
    out[tied[picked]] = True
    return out
