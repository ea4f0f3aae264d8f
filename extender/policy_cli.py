"""`gpuslice policy check FILE`: validate a policy offline."""

from __future__ import annotations

import argparse
import json
import sys

from extender.core.policy import PolicyError, load_policy


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="work with policy files")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = psub.add_parser("check", help="validate a policy file (exit 0 valid, 1 invalid)")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="print the effective policy (with defaults) as JSON")
    check.set_defaults(func=check_cmd)


def check_cmd(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(f"{args.file}: invalid", file=sys.stderr)
        for path, value, reason in exc.problems:
            print(f"  {path}: {reason} (got {value!r})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(policy.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True))
    else:
        print(f"{args.file}: valid (policy version {policy.version}, {len(policy.profiles)} profiles, "
              f"{len(policy.models)} GPU models)")
    return 0
