"""The bind placer: the co-location model on the chosen node, with greedy as its floor. (For one pod
on one node `solve()` tries every GPU set against the model's objective; CP-SAT when the problem is
bigger.)

Filter and prioritize stay on the greedy `evaluate` (cheap, and it is what the solver starts from);
bind asks the solver for the best GPUs on the node kube-scheduler picked. The solver's search starts
from greedy's answer and falls back to it, and its choice is checked against the same per-GPU rules
greedy uses, so bind succeeds exactly where filter passed and never breaks a class rule.

Reservations already in flight on the node stay where they are: their assignment may already be on
its way to the API server, so the model treats them as fixed tenants.
"""

from __future__ import annotations

from extender.core.ledger import NodeState
from extender.core.policy import Policy
from extender.core.requests import SliceRequest
from extender.core.solver import Problem, Rules, SolverStats, Weights, bins_for_node, item_for, solve
from extender.engine.placement import (
    GpuChoice,
    NodeFit,
    choose_slice,
    evaluate,
    gpu_reject_reason,
    gpu_score,
    needed_cus,
)


class SolverPlacer:
    """A Placer `(req, node_state, policy) -> NodeFit`; `stats` feeds the solver metrics."""

    def __init__(self, stats: SolverStats | None = None) -> None:
        self.stats = stats if stats is not None else SolverStats()
        self.rejected_choices = 0  # solver answers that failed the greedy rule check (should stay 0)

    def __call__(self, req: SliceRequest, state: NodeState, policy: Policy) -> NodeFit:
        greedy_fit = evaluate(req, state, policy)
        # Greedy fails only when too few GPUs pass the per-GPU rules; the model has the same rules.
        if not policy.solver.enabled or not greedy_fit.ok:
            return greedy_fit
        positions = {g.info.index: b for b, g in enumerate(state.gpus)}
        hint = (tuple(sorted(positions[c.gpu.info.index] for c in greedy_fit.choices)),)
        problem = Problem(bins_for_node(state, policy), (item_for("pod", req, state, policy),),
                          Rules.from_policy(policy), Weights.from_policy(policy))
        solution = solve(problem, policy.solver.timeLimitMs / 1000, policy.solver.workers, hint, self.stats)
        where = solution.placement[0]
        if not solution.ok or where is None or where == hint[0]:
            return greedy_fit
        gpus = [state.gpus[b] for b in where]
        if any(gpu_reject_reason(req, g, policy) is not None for g in gpus):
            self.rejected_choices += 1
            return greedy_fit
        choices = []
        for g in gpus:
            chosen = choose_slice(req, g, needed_cus(req, g, policy))
            if chosen is None:
                return greedy_fit
            cus, burst = chosen
            choices.append(GpuChoice(g, cus, burst, gpu_score(req, g, cus, policy)))
        return NodeFit(True, choices=tuple(choices), score=sum(c.score for c in choices) / len(choices))
