"""`gpuslice policy check FILE`: validate a policy offline."""

from __future__ import annotations

import argparse
import difflib
import json
import reprlib
import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from extender.core.policy import Bytes, Policy, PolicyError, load_policy

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
    ref = psub.add_parser("reference", help="print the policy reference (Markdown, docs/policy-reference.md)")
    ref.set_defaults(func=reference_cmd)


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


# --- the policy reference (docs/policy-reference.md is this function's output) ----------------------

_BYTES = "quantity (bytes, e.g. 60Gi)"
_BYTES_VALIDATOR = get_args(Bytes)[1]


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _BYTES if _BYTES_VALIDATOR in args[1:] else _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation))


def _constraints(info: FieldInfo) -> str:
    words = []
    for m in info.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >=")):
            value = getattr(m, attr, None)
            if value is not None:
                words.append(f"{sign} {value}")
    return ", ".join(words)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(see below)"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return "built-in: " + ", ".join(f"`{k}`" for k in value)
    return f"`{json.dumps(value)}`"


def _nested(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        inner = _nested(arg)
        if inner is not None:
            return inner
    return None


def reference_markdown() -> str:
    """Every policy field with its type, default, bounds and meaning, from the schema itself."""
    lines = ["# Policy reference", "",
             "Generated from the policy schema (`extender/core/policy.py`) by `gpuslice policy reference`;",
             "a test keeps this file equal to that output. Every field has a default, so an empty file is a",
             "valid policy; unknown keys are errors. `policies/default.yaml` lists every field with its default.",
             "`<name>` stands for a key of your choice (a GPU model, a profile, a namespace).", ""]
    seen: set[type[BaseModel]] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("", Policy)]
    while queue:
        path, model = queue.pop(0)
        if model in seen and path:
            continue
        seen.add(model)
        title = path or "top level"
        lines += [f"## {title}", ""]
        doc = (model.__doc__ or "").strip()
        if doc and model is not BaseModel and "Usage docs" not in doc:
            lines += [" ".join(doc.split()), ""]
        lines += ["| field | type | default | bounds | meaning |", "|---|---|---|---|---|"]
        for name, info in model.model_fields.items():
            key = info.alias or name
            kind = _BYTES if _BYTES_VALIDATOR in info.metadata else _type_name(info.annotation)
            lines.append(f"| `{key}` | {kind} | {_default(info)} | "
                         f"{_constraints(info)} | {(info.description or '').replace('|', '/')} |")
            child = _nested(info.annotation)
            if child is not None:
                origin = get_origin(info.annotation)
                suffix = ".<name>" if origin is dict else "[]" if origin is list else ""
                queue.append((f"{path + '.' if path else ''}{key}{suffix}", child))
        lines.append("")
    return "\n".join(lines)


def reference_cmd(args: argparse.Namespace) -> int:
    print(reference_markdown(), end="")
    return 0
