"""The `gpuslice` command. Each face registers its own subcommands; this module only wires them."""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Sequence

from extender import __version__
from extender.agent.cli import register as register_agent
from extender.core.errors import UsageError
from extender.explain_cli import register as register_explain
from extender.plan_cli import register as register_plan
from extender.policy_cli import register as register_policy
from extender.profile_cli import register as register_profile
from extender.rightsize_cli import register as register_rightsize
from extender.serve_cli import register as register_serve
from extender.sim.cli import register as register_simulate
from extender.webhook_cli import register as register_webhook

_DEFAULT_ONLY = "\0"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default. Options that are off or unset by default, and help texts
    that already state their default, are left as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if text == _DEFAULT_ONLY:
            return "(default: %(default)s)"
        if action.default in (None, False, []) or "default" in text:
            return text
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and action.default not in (None, False, []):
            action = copy.copy(action)
            action.help = _DEFAULT_ONLY  # an option without help still shows its default
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser, so that every --help uses HelpFormatter."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gpuslice", description="Fractions of AMD Instinct GPUs for Kubernetes.")
    parser.add_argument("--version", action="version", version=f"gpuslice {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (register_policy, register_serve, register_agent, register_plan, register_simulate,
                     register_explain, register_webhook, register_profile, register_rightsize):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:  # a misconfiguration a person fixes: one line, no traceback
        print(f"gpuslice {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
