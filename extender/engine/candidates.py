"""How many candidate nodes filter passes: the cap on `scoring.candidates` (`maxNodes`).

Nodes whose scores tie exactly are interchangeable to the extender, yet on a fleet of identical nodes
nearly all of them tie (every empty node scores alike), so `engine/fragmentation.narrow` alone passes
nearly every node and kube-scheduler decodes, scores and sends back to prioritize a thousand names per
pod. The cap keeps the `maxNodes` best; nodes tied at the cut are taken in the order of a stable hash
of the pod's UID and the node's name (`tie_order`): deterministic (the same pod gets the same
candidates from every replica and every retry), and different pods get different tied nodes, so a
burst of pods does not pile onto the same few nodes while their informer state catches up.

`at_most` is the rule; `candidate_mask` is filter's numpy form of `narrow` followed by `at_most`,
property-tested against them (tests/engine/test_candidates_cap.py).
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import lru_cache
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
_MIX = 0x9E3779B1  # odd: multiplying by it mod 2**32 permutes, and scatters neighbouring values
_EPS = 1e-9  # engine/fragmentation.narrow's slack for float equality


@lru_cache(maxsize=1 << 16)
def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def tie_order(pod_uid: str, node: str) -> int:
    """A stable (process- and replica-independent) rank of `node` among equal-scored nodes for this pod."""
    return ((_crc(node) ^ _crc(pod_uid)) * _MIX) & 0xFFFFFFFF


def at_most(values: Mapping[K, float], keep: set[K], max_nodes: int | None, pod_uid: str,
            label: Callable[[K], str] = str) -> set[K]:
    """The `max_nodes` of `keep` with the lowest `values` (a rise, or 10 minus a score), ties broken by
    `tie_order` (then by name); `keep` itself when it is no larger or there is no cap. `label` maps keys
    that are not node names (the simulator's node indices) to the names the tie order hashes."""
    if max_nodes is None or len(keep) <= max_nodes:
        return keep
    return set(heapq.nsmallest(max_nodes, keep,
                               key=lambda k: (values[k], tie_order(pod_uid, label(k)), label(k))))


def candidate_mask(values: np.ndarray, names: Sequence[str], tolerance: float, min_nodes: int,
                   max_nodes: int | None, pod_uid: str) -> np.ndarray:
    """Per node of `names`: is it a candidate, i.e. in `at_most(values, narrow(values, tolerance,
    min_nodes), max_nodes, pod_uid)` — without a Python object per node but the tied ones' hashes."""
    finite = np.isfinite(values)
    fin = values[finite]
    if fin.size == 0:
        return finite
    cut = float(fin.min()) + tolerance + _EPS
    if fin.size >= min_nodes:
        cut = max(cut, float(np.partition(fin, min_nodes - 1)[min_nodes - 1]) + _EPS)
    else:
        cut = float(fin.max()) + _EPS
    keep = finite & (values <= cut)
    count = int(keep.sum())
    if max_nodes is None or count <= max_nodes:
        return keep
    kept = np.flatnonzero(keep)
    edge = float(np.partition(values[kept], max_nodes - 1)[max_nodes - 1])  # the cap's last value
    out = np.zeros(values.size, dtype=bool)
    below = kept[values[kept] < edge]
    out[below] = True
    tied = kept[values[kept] == edge]
    order = np.fromiter((tie_order(pod_uid, names[i]) for i in tied.tolist()), np.int64, tied.size)
    if np.unique(order).size < order.size:  # a hash collision: the name decides, as in at_most
        ranked = np.lexsort((np.array([names[i] for i in tied.tolist()]), order))
    else:
        ranked = np.argsort(order)
    out[tied[ranked[: max_nodes - below.size]]] = True
    return out
