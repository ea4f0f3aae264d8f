"""The serving thread's CPU per verb, beside the request duration: the difference is time spent
waiting (for the GIL, a lock, the API server), which the duration alone cannot tell apart."""

from __future__ import annotations

from tests.http.conftest import MakeExtender, load, sample, with_annotations

SLICE = {"gpuslice.io/compute": "250m", "gpuslice.io/memory": "16Gi"}


def test_each_verb_counts_the_cpu_its_thread_spent_and_never_more_than_its_duration(
        make_extender: MakeExtender) -> None:
    ext = make_extender()
    m = ext.metrics()
    for verb in ("filter", "prioritize", "preempt", "bind"):  # exported before the first call
        assert sample(m, "gpuslice_extender_request_cpu_seconds_total", verb=verb) == 0
    req = with_annotations(load("ncc-true-filter-01.request.json"), SLICE)
    for _ in range(3):
        assert ext.post("filter", req)["NodeNames"]
    m = ext.metrics()
    cpu = sample(m, "gpuslice_extender_request_cpu_seconds_total", verb="filter")
    took = sample(m, "gpuslice_extender_request_duration_seconds_sum", verb="filter")
    assert cpu is not None and took is not None
    assert 0 < cpu <= took
    assert sample(m, "gpuslice_extender_request_cpu_seconds_total", verb="prioritize") == 0
