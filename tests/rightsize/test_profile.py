"""`gpuslice profile fit` and `sweep` on recorded results: the policy's measured Llama-3.1-8B profile
comes back out of fit, bad data is refused with a reason, and every sweep size is a slice the extender
hands out exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extender.core.atoms import round_up_to_atoms
from extender.core.benchresults import ResultsError, parse_results
from extender.core.policy import Policy, load_policy
from extender.core.profile_fit import ProfileFitError, fit_profile
from extender.core.profile_sweep import SIZE_ENV, SweepError, SweepSpec, sweep_jobs, sweep_sizes
from extender.core.requests import parse_slice_request

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
INFERENCE = ROOT / "policies" / "mi300x-inference.yaml"
LLAMA_RUNS = sorted((DATA / "llama-3.1-8b").glob("*.json"))


def gpuslice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extender", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def policy_profile(name: str) -> dict:
    return yaml.safe_load(INFERENCE.read_text())["profiles"][name]


def test_fit_on_vllm_results_gives_the_policys_llama_profile() -> None:
    out = gpuslice("profile", "fit", *map(str, LLAMA_RUNS), "--name", "llama-3.1-8b", "--min-memory", "60G")
    assert out.returncode == 0, out.stderr
    fitted = yaml.safe_load(out.stdout)["profiles"]["llama-3.1-8b"]
    assert fitted == policy_profile("llama-3.1-8b")
    assert '#   repeats: {"64": [10.6, 10.7]}' in out.stdout  # the slower of two runs at 64 CUs is kept
    assert '#   model_id: "meta-llama/Llama-3.1-8B-Instruct"' in out.stdout
    assert "#   offAtomGrid: [30, 76]" in out.stdout


def test_fit_on_the_plain_csv_gives_the_same_profile() -> None:
    policy = load_policy(INFERENCE)
    runs = parse_results((DATA / "llama-3.1-8b.csv").read_text(), "llama.csv")
    fitted = fit_profile("llama-3.1-8b", runs, "MI300X", policy.models["MI300X"], "60G")
    assert fitted.profile == policy.profiles["llama-3.1-8b"]
    assert fitted.metadata["classFrom"].startswith("scaling 0.57")


def test_fit_infers_compute_bound_from_near_linear_scaling() -> None:
    runs = parse_results((DATA / "embedding-points.json").read_text(), "emb.json")
    fitted = fit_profile("emb", runs, "MI300X", Policy().models["MI300X"], "8Gi")
    assert fitted.profile.workloadClass == "compute-bound"
    assert fit_profile("emb", runs, "MI300X", Policy().models["MI300X"], "8Gi", "memory-bound") \
        .profile.workloadClass == "memory-bound"


def test_fit_merges_into_a_policy_file_that_stays_valid(tmp_path: Path) -> None:
    merged = tmp_path / "merged.yaml"
    out = gpuslice("profile", "fit", str(DATA / "embedding-points.json"), "--name", "embed-v2", "--min-memory",
                   "8Gi", "--merge", str(INFERENCE), "--out", str(merged))
    assert out.returncode == 0, out.stderr
    policy = load_policy(merged)
    assert [p.rps for p in policy.profiles["embed-v2"].points] == [400, 780, 1500]
    assert policy.profiles["llama-3.1-8b"] == load_policy(INFERENCE).profiles["llama-3.1-8b"]


@pytest.mark.parametrize(("name", "reason"), [
    ("non-monotonic.csv", "non-monotonic: fewer req/s than 64 CUs (10.6)"),
    ("sparse.csv", "too sparse: 2 CU count(s)"),
])
def test_fit_refuses_bad_data_with_a_reason(name: str, reason: str) -> None:
    out = gpuslice("profile", "fit", str(DATA / name), "--name", "x", "--min-memory", "60G")
    assert out.returncode == 2
    assert reason in out.stderr
    assert out.stdout == ""


def test_fit_refuses_a_narrow_span_and_sizes_beyond_the_gpu() -> None:
    model = Policy().models["MI300X"]
    narrow = parse_results("computeUnits,rps\n32,7\n40,8\n48,9\n", "n.csv")
    with pytest.raises(ProfileFitError, match="spans less than 2x"):
        fit_profile("x", narrow, "MI300X", model, "60G")
    big = parse_results("computeUnits,rps\n32,7\n64,8\n320,9\n", "b.csv")
    with pytest.raises(ProfileFitError, match="more CUs than a MI300X has"):
        fit_profile("x", big, "MI300X", model, "60G")


def test_vllm_results_without_a_cu_count_or_with_no_completed_request_are_refused() -> None:
    run = json.loads(LLAMA_RUNS[0].read_text())
    del run["computeUnits"]
    with pytest.raises(ResultsError, match="--metadata computeUnits=N"):
        parse_results(json.dumps(run), "run.json")
    failed = {**json.loads(LLAMA_RUNS[0].read_text()), "completed": 0}
    with pytest.raises(ResultsError, match="no request completed"):
        parse_results(json.dumps(failed), "run.json")
    with pytest.raises(ResultsError, match="header with computeUnits and rps"):
        parse_results("cus;rps\n32;7\n", "x.csv")


def test_sweep_sizes_are_balanced_whole_atoms_up_to_one_gpu() -> None:
    policy = load_policy(INFERENCE)
    sizes = sweep_sizes(policy, "MI300X")
    assert sizes == [32, 64, 96, 128, 160, 192, 224, 256]  # 304 CUs less the 32-CU burst region: 272
    assert all(round_up_to_atoms(c, 8) == c for c in sizes)
    for bad, why in ((30, "whole number of atoms"), (40, "rounding"), (288, "within 1..272")):
        with pytest.raises(SweepError, match=why):
            sweep_sizes(policy, "MI300X", [bad])


def test_sweep_jobs_ask_the_extender_for_exactly_each_size() -> None:
    policy = load_policy(INFERENCE)
    spec = SweepSpec("llama", "registry.example/bench:1", ("run-bench",), "60Gi", "MI300X", "memory-bound",
                     node="gpu-7")
    sizes = sweep_sizes(policy, "MI300X")
    jobs = sweep_jobs(policy, spec, sizes)
    model = policy.models["MI300X"]
    for cus, job in zip(sizes, jobs, strict=True):
        template = job["spec"]["template"]
        req = parse_slice_request(template["metadata"]["labels"], template["metadata"]["annotations"], policy)
        assert req is not None and req.guaranteed_cus(policy, model, model.computeUnits) == cus
        assert req.memory_bytes == 60 * 2**30 and req.count == 1
        container = template["spec"]["containers"][0]
        assert container["env"] == [{"name": SIZE_ENV, "value": str(cus)}]
        assert template["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "gpu-7"}
        assert job["metadata"]["name"] == f"llama-sweep-{cus}cu"


def test_sweep_prints_one_job_per_size() -> None:
    out = gpuslice("profile", "sweep", "--name", "llama", "--image", "bench:1", "--memory", "60Gi", "--policy",
                   str(INFERENCE), "--sizes", "32,64,128", "--", "sh", "-c", "bench --metadata computeUnits=$X")
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert [d["metadata"]["name"] for d in docs] == ["llama-sweep-32cu", "llama-sweep-64cu", "llama-sweep-128cu"]
    assert docs[0]["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["sh", "-c"]
    assert "ONE AT A TIME" in out.stdout
    bad = gpuslice("profile", "sweep", "--name", "llama", "--image", "bench:1", "--memory", "60Gi", "--sizes", "12",
                   "--", "bench")
    assert bad.returncode == 2 and "whole number of atoms" in bad.stderr
