"""Placement's per-GPU-shape answers live as long as some GPU state has that shape (issue 14 point 3:
RSS flat under churn). Before, shapes were ids in a table only cleared at 1,000,000 entries, and the
answers per request were kept for every shape churn ever made."""

from __future__ import annotations

import gc

from extender.core import ledger as ledger_module
from extender.core.ledger import Ledger, PodRef
from extender.core.policy import parse_policy
from extender.core.requests import parse_slice_request
from extender.engine.demo import mi300x_inventory
from extender.engine.placement import build_assignment, evaluate


def test_shapes_and_their_answers_go_with_the_states() -> None:
    policy = parse_policy({})
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory)
    ledger.set_node("n0", mi300x_inventory("n0"))
    gc.collect()
    before = len(ledger_module._SHAPES)
    for i in range(60):  # each step a new memory size: a GPU state of a new shape, the old one replaced
        req = parse_slice_request({}, {"gpuslice.io/compute": f"{125 * (1 + i % 4)}m",
                                       "gpuslice.io/memory": f"{i + 1}Gi"}, policy)
        assert req is not None
        fit = evaluate(req, ledger.node("n0"), policy)  # answers are kept on the shapes it reads
        assert fit.ok
        ledger.reserve(PodRef(f"u{i}", "ns", f"p{i}"), build_assignment(req, "n0", fit.choices, policy),
                       req.workload_class, req.compute_millis, None)
        if i:
            ledger.release(f"u{i - 1}")
    state = ledger.node("n0")
    assert state is not None and len(state.pods) == 1
    gc.collect()
    live = {id(g.shape) for g in state.gpus}
    assert len(ledger_module._SHAPES) - before <= len(live) + 2  # not one per step
