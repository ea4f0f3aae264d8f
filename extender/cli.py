"""The `gpuslice` command. Each face registers its own subcommands; this module only wires them."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from extender import __version__
from extender.agent.cli import register as register_agent
from extender.plan_cli import register as register_plan
from extender.policy_cli import register as register_policy
from extender.profile_cli import register as register_profile
from extender.rightsize_cli import register as register_rightsize
from extender.serve_cli import register as register_serve
from extender.sim.cli import register as register_simulate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuslice", description="Fractions of AMD Instinct GPUs for Kubernetes.")
    parser.add_argument("--version", action="version", version=f"gpuslice {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (register_policy, register_serve, register_agent, register_plan, register_simulate,
                     register_profile, register_rightsize):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
