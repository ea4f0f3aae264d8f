"""Steps the memo property tests share: a pod placed through filter, prioritize and bind, or one leaving,
and the loop that plays a plan of them beside the test's own steps."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from extender.engine.cluster import MemoryCluster, PodView
from extender.engine.scheduler import Engine


def place(engine: Engine, pod: PodView, names: list[str], placed: list[str]) -> None:
    """Filter, prioritize and bind on the best-scored node, as kube-scheduler would; `placed` gets the UID."""
    cluster: MemoryCluster = engine.cluster  # type: ignore[assignment]
    cluster.add_pod(pod)
    passed = engine.filter(pod, names=names).passed
    if passed:
        scores = dict(engine.prioritize(pod, names=passed))
        if engine.bind("default", pod.name, pod.uid, max(passed, key=lambda n: scores[n])) == "":
            placed.append(pod.uid)


def leave(engine: Engine, placed: list[str], k: int) -> None:
    """The k-th placed pod (modulo) is deleted and forgotten."""
    if placed:
        uid = placed.pop(k % len(placed))
        engine.cluster.remove_pod(uid)  # type: ignore[attr-defined]
        engine.forget_pod(uid)


def steps_of(shapes: st.SearchStrategy, nodes: list[str], *own: st.SearchStrategy) -> st.SearchStrategy:
    """Plans of up to 14 steps: pods placed and leaving, requests asked about some nodes, and the test's own."""
    ask = st.tuples(st.just("ask"), shapes, st.lists(st.sampled_from(nodes), min_size=1, max_size=6, unique=True))
    return st.lists(st.one_of(st.tuples(st.just("place"), shapes), st.tuples(st.just("leave"), st.integers(0, 30)),
                              *own, ask), min_size=1, max_size=14)


def play(engine: Engine, plan: list[tuple], pod_of: Callable[..., PodView], nodes: list[str],
         own: Callable[[int, str, tuple], None]) -> None:
    """Apply each step of `plan`: pods placed (`pod_of(uid, *shape)`) and leaving here, then `own(i, op, args)`
    for every step, which applies the test's own steps and checks what it checks after each."""
    placed: list[str] = []
    for i, (op, *args) in enumerate(plan):
        if op == "place":
            place(engine, pod_of(f"p{i}", *args[0]), nodes, placed)
        elif op == "leave":
            leave(engine, placed, args[0])
        own(i, op, tuple(args))
