"""Bind through the CP-SAT placer shows up as the DESIGN's solver metrics, computed at scrape time."""

from __future__ import annotations

from extender.engine.solver_placer import SolverPlacer
from tests.http.conftest import MakeExtender, load, sample, with_annotations

SLICE = {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "16Gi", "gpuslice.io/class": "memory-bound"}


def test_solver_outcomes_and_durations_are_exported(make_extender: MakeExtender) -> None:
    ext = make_extender(engine_kwargs={"bind_placer": SolverPlacer()})
    before = ext.metrics()
    assert sample(before, "gpuslice_solver_duration_seconds_count") == 0

    ext.post("filter", with_annotations(load("ncc-true-filter-01.request.json"), SLICE))
    assert ext.post("bind", load("ncc-true-bind-01.request.json")) == {"Error": ""}

    after = ext.metrics()
    assert sample(after, "gpuslice_solver_duration_seconds_count") == 1
    assert sample(after, "gpuslice_solver_duration_seconds_sum") > 0
    solved = sum(sample(after, "gpuslice_solver_outcome_total", outcome=o) or 0
                 for o in ("optimal", "feasible", "fallback-greedy"))
    assert solved == 1


def test_no_solver_families_without_the_solver(make_extender: MakeExtender) -> None:
    assert "gpuslice_solver_outcome_total" not in make_extender().metrics()
