"""`gpuslice profile sweep` (the Jobs that measure a model at a series of slice sizes) and
`gpuslice profile fit` (measurements -> a validated throughput profile for the policy)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from extender.core.benchresults import Measurement, parse_results
from extender.core.errors import InputError
from extender.core.policy import Policy, PolicyError, load_policy, parse_policy
from extender.core.profile_fit import FittedProfile, fit_profile
from extender.core.profile_sweep import SIZE_ENV, SweepSpec, sweep_jobs, sweep_sizes
from extender.kube.client import api_client
from extender.rightsize.sweep import SweepRunner

CLASSES = ("memory-bound", "compute-bound")


def register(sub: argparse._SubParsersAction) -> None:
    prof = sub.add_parser("profile", help="measure a model's throughput per slice size and fit a profile")
    psub = prof.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    sweep = psub.add_parser(
        "sweep", formatter_class=fmt,
        help="print (or run, one at a time) the Jobs that benchmark a container at a series of slice sizes",
        description=f"One Job per CU count on the policy's balanced grid (whole XCD atoms), each with the same "
        f"memory, on one GPU. The container learns its size from ${SIZE_ENV}; pass it to the benchmark "
        f"(vLLM: --metadata computeUnits=${SIZE_ENV}) and print the result JSON last. The Jobs must run "
        "one after another: --apply does that; printed manifests must be applied the same way.")
    sweep.add_argument("--name", required=True, help="profile name; Jobs are <name>-sweep-<CUs>cu")
    sweep.add_argument("--image", required=True, help="the benchmark container image")
    sweep.add_argument("--memory", required=True, help="GPU memory of every run (e.g. 60Gi)")
    sweep.add_argument("--gpu-model", default="MI300X", help="GPU model the runs are on (from the policy)")
    sweep.add_argument("--class", dest="workload_class", choices=CLASSES, default="memory-bound",
                       help="class the runs declare (for the extender's co-location rules)")
    sweep.add_argument("--sizes", help="CU counts, comma-separated (default: every balanced step of one GPU)")
    sweep.add_argument("--namespace", default="default")
    sweep.add_argument("--node", help="pin every run to this node (recommended: an otherwise idle one)")
    sweep.add_argument("--scheduler-name", default="gpuslice")
    sweep.add_argument("--policy", help="policy file (default: built-in defaults)")
    sweep.add_argument("--apply", action="store_true", help="create the Jobs one at a time and wait for each")
    sweep.add_argument("--kubeconfig", help="with --apply: the cluster (default: in-cluster credentials)")
    sweep.add_argument("--timeout", type=float, default=3600.0, help="with --apply: seconds to wait per run")
    sweep.add_argument("--out", help="with --apply: directory for each run's result JSON (its last log line)")
    sweep.add_argument("command", nargs=argparse.REMAINDER, help="-- the benchmark command and its arguments")
    sweep.set_defaults(func=sweep_cmd)

    fit = psub.add_parser(
        "fit", formatter_class=fmt,
        help="fit a validated profile from benchmark results (vLLM serving JSON, or computeUnits,rps CSV/JSON)",
        description="Reads vLLM's benchmark_serving.py / `vllm bench serve` result JSON (request_throughput; "
        "the CU count from --metadata computeUnits=N) or a plain CSV (header computeUnits,rps) or JSON "
        "([{computeUnits, rps}] or {points: [...]}). Repeated runs at one size keep the slowest. Rejects "
        "throughput that falls as CUs grow, and fewer than 3 sizes or a span under 2x, with the reason.")
    fit.add_argument("results", nargs="+", help="result files")
    fit.add_argument("--name", required=True, help="profile name in the policy")
    fit.add_argument("--min-memory", required=True, help="memory the model needs (e.g. 60G), as a quantity")
    fit.add_argument("--gpu-model", default="MI300X")
    fit.add_argument("--class", dest="workload_class", choices=CLASSES,
                     help="default: from how throughput scales with CUs")
    fit.add_argument("--policy", help="policy whose GPU model table to use (default: built-in defaults)")
    fit.add_argument("--merge", metavar="POLICY", help="write this policy file with the profile added or "
                     "replaced to --out (YAML comments are not kept)")
    fit.add_argument("--out", help="with --merge: where to write (default: stdout)")
    fit.add_argument("--json", action="store_true", help="print the profile and its metadata as JSON")
    fit.set_defaults(func=fit_cmd)


def _policy(path: str | None) -> Policy:
    return load_policy(path) if path else Policy()


def sweep_cmd(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        policy = _policy(args.policy)
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
        spec = SweepSpec(args.name, args.image, tuple(command), args.memory, args.gpu_model, args.workload_class,
                         args.namespace, args.node, args.scheduler_name)
        jobs = sweep_jobs(policy, spec, sweep_sizes(policy, args.gpu_model, sizes))
    except ValueError:
        print(f"gpuslice profile sweep: --sizes {args.sizes!r}: CU counts are whole numbers", file=sys.stderr)
        return 2
    except (InputError, PolicyError) as exc:
        print(f"gpuslice profile sweep: {exc}", file=sys.stderr)
        return 2
    if not args.apply:
        print(f"# {len(jobs)} runs of {args.name}; apply them ONE AT A TIME (wait for each Job to finish), or use "
              "`gpuslice profile sweep --apply`")
        print(yaml.safe_dump_all(jobs, sort_keys=False), end="")
        return 0
    results = SweepRunner(api_client(args.kubeconfig)).run(jobs, args.timeout, Path(args.out) if args.out else None)
    for name, outcome in results:
        print(f"{name}: {outcome}")
    return 0 if len(results) == len(jobs) and all(o.startswith("succeeded") for _, o in results) else 1


def fit_cmd(args: argparse.Namespace) -> int:
    try:
        policy = _policy(args.policy)
        if args.gpu_model not in policy.models:
            raise InputError("--gpu-model", args.gpu_model, f"not in the policy's models {sorted(policy.models)}")
        runs: list[Measurement] = []
        for path in args.results:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise InputError(path, None, f"cannot read: {exc.strerror}") from None
            runs.extend(parse_results(text, path))
        fitted = fit_profile(args.name, runs, args.gpu_model, policy.models[args.gpu_model], args.min_memory,
                             args.workload_class)
        if args.merge:
            return _merge(args, fitted)
    except (InputError, PolicyError) as exc:
        print(f"gpuslice profile fit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"name": fitted.name, "profile": fitted.document(), "metadata": fitted.metadata}, indent=2))
    else:
        print(profile_yaml(fitted, args.results), end="")
    return 0


def profile_yaml(fitted: FittedProfile, sources: list[str]) -> str:
    """The profile as a `profiles:` block to paste into a policy, its metadata as comments above it."""
    lines = [f"# gpuslice profile fit {' '.join(sources)}"]
    lines += [f"#   {k}: {json.dumps(v)}" for k, v in fitted.metadata.items()]
    body = yaml.safe_dump({"profiles": {fitted.name: fitted.document()}}, sort_keys=False, default_flow_style=None)
    return "\n".join(lines) + "\n" + body


def _merge(args: argparse.Namespace, fitted: FittedProfile) -> int:
    try:
        doc = yaml.safe_load(Path(args.merge).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError("--merge", args.merge, f"cannot read as YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError("--merge", args.merge, "not a policy (a mapping of fields)")
    profiles = doc.get("profiles") or {}
    profiles[fitted.name] = fitted.document()
    doc["profiles"] = profiles
    parse_policy(doc, args.merge)  # the merged file must still be a valid policy
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{args.out}: policy with profile {fitted.name} ({len(fitted.profile.points)} points)")
    else:
        print(text, end="")
    return 0
