"""`gpuslice policy check FILE`: validate a policy offline."""

from __future__ import annotations

import argparse
import difflib
import json
import reprlib
import sys

from extender.core.policy import Policy, PolicyError, load_policy

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2
MAX_LINES = 10  # a file that is not a policy at all would otherwise list every one of its keys


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="work with policy files")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = psub.add_parser("check", help="validate a policy file (exit 0 valid, 1 invalid)")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="print the effective policy (with defaults) as JSON")
    check.set_defaults(func=check_cmd)


def top_level_keys() -> list[str]:
    return sorted(f.alias or name for name, f in Policy.model_fields.items())


def unknown_top_level(exc: PolicyError) -> list[str]:
    return [path for path, _, reason in exc.problems if "." not in path and reason.startswith("Extra inputs")]


def describe(exc: PolicyError) -> list[str]:
    """Short lines: one per problem (values abbreviated), and for unknown top-level keys one line
    naming the first few with the nearest real key, so that a file that is not a policy reads as such."""
    unknown = unknown_top_level(exc)
    lines = []
    if unknown:
        known = top_level_keys()
        named = []
        for key in unknown[:5]:
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            named.append(f"{key} (did you mean {near[0]}?)" if near else key)
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        lines.append(f"unknown top-level key(s): {', '.join(named)}{more}; a policy's keys are {', '.join(known)}")
    for path, value, reason in exc.problems:
        if path in unknown:
            continue
        first = " ".join(reason.split())
        lines.append(f"{path}: {first} (got {_short.repr(value)})")
    if len(lines) > MAX_LINES:
        lines[MAX_LINES:] = [f"... and {len(lines) - MAX_LINES} more problem(s)"]
    return lines


def check_cmd(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(f"{args.file}: invalid", file=sys.stderr)
        for line in describe(exc):
            print(f"  {line}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(policy.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True))
    else:
        print(f"{args.file}: valid (policy version {policy.version}, {len(policy.profiles)} profiles, "
              f"{len(policy.models)} GPU models)")
    return 0
