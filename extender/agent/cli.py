"""`gpuslice agent ...`: run the node agent, or show what it would publish and hand out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from extender.agent.allocation import allocation_for
from extender.agent.runner import add_run_parser
from extender.agent.topology import read_topology
from extender.core.assignment import parse_assignment
from extender.core.errors import InputError
from extender.core.inventory import format_inventory


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="the node agent (inventory, device plugin, VRAM accounting)")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")

    inv = asub.add_parser("inventory", help="print the gpuslice.io/inventory JSON for a host tree")
    inv.add_argument("--root", default="/", help="host root the sysfs tree lives under (default /)")
    inv.add_argument("--verbose", action="store_true", help="also list skipped nodes on stderr")
    inv.set_defaults(func=inventory_cmd)

    env = asub.add_parser("env", help="print the environment and device nodes a container of the assignment gets")
    env.add_argument("--root", default="/", help="host root the sysfs tree lives under (default /)")
    env.add_argument("--assignment", required=True, help="file holding a gpuslice.io/assignment JSON")
    env.set_defaults(func=env_cmd)

    add_run_parser(asub)


def inventory_cmd(args: argparse.Namespace) -> int:
    topology = read_topology(args.root)
    if args.verbose:
        for path, reason in topology.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    print(format_inventory(topology.inventory()))
    return 0


def env_cmd(args: argparse.Namespace) -> int:
    try:
        assignment = parse_assignment(Path(args.assignment).read_text())
        allocation = allocation_for(assignment, read_topology(args.root))
    except OSError as exc:
        print(f"{args.assignment}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except InputError as exc:
        print(f"{exc.key}: {exc.reason} (got {exc.value!r})", file=sys.stderr)
        return 1
    for key, value in allocation.envs.items():
        print(f"{key}={value}")
    for device in allocation.devices:
        print(f"DEVICE={device}")
    return 0
