"""`gpuslice rightsize`: the right-sizing controller (dry run unless --apply)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from kubernetes.config import ConfigException
from prometheus_client import start_http_server

from extender.core.policy import Policy, PolicyError, load_policy
from extender.kube.client import api_client, core_api
from extender.kube.snapshot import list_views
from extender.rightsize.controller import Outcome, RightSizer
from extender.rightsize.metrics import RightsizeMetrics
from extender.rightsize.prometheus import Prometheus
from extender.rightsize.workloads import Workloads

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rightsize", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="resize SLA workloads' slices (and replicas) to observed demand; dry run unless --apply",
        description="Watches Deployments and StatefulSets whose pod template carries <prefix>/profile and "
        "<prefix>/target-rps, reads each one's request rate and per-pod VRAM from Prometheus (the policy's "
        "rightsizing.query / vramQuery), and sizes each pod for the window's peak plus headroom by the "
        "extender's own SLA rule. With --apply it patches the pod template (target-rps, memory) and the "
        "replicas, records the change on the owner (read by `gpuslice explain`) and writes an Event; it waits "
        "for rollouts and PodDisruptionBudgets and is bounded by the policy's hysteresis, minimum interval and "
        "maximum step. Between resizes it repacks (rightsizing.repack): it evicts a pod alone on its GPU when "
        "the extender would place its replacement beside other tenants and the rest of the fleet carries the "
        "need, which frees the GPU (a one-pod Deployment whose rolling update starts the new pod first is "
        "restarted instead); one pod per pass.")
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--kubeconfig", metavar="FILE")
    source.add_argument("--in-cluster", action="store_true")
    p.add_argument("--policy", metavar="FILE", help="policy YAML, re-read every pass (default: built-in defaults)")
    p.add_argument("--namespace", help="only this namespace (default: all)")
    p.add_argument("--apply", action="store_true", help="make the changes (default: only report them)")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between passes")
    p.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0: off)")
    p.add_argument("--json", action="store_true", help="print each pass's outcomes as JSON lines")
    p.set_defaults(func=rightsize_cmd)


class PolicyFile:
    """The policy, re-read on every pass; an invalid edit is logged and the last good policy kept."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.current = load_policy(path) if path else Policy()

    def __call__(self) -> Policy:
        if self.path:
            try:
                self.current = load_policy(self.path)
            except PolicyError as exc:
                log.error("rightsize: keeping the last good policy: %s", exc)
        return self.current


def rightsize_cmd(args: argparse.Namespace) -> int:
    try:
        policy = PolicyFile(args.policy)
        api = api_client(None if args.in_cluster else args.kubeconfig)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (ConfigException, OSError) as exc:
        print(f"gpuslice rightsize: cannot reach the cluster: {exc}", file=sys.stderr)
        return 2
    metrics = RightsizeMetrics()
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=metrics.registry)
    sizer = RightSizer(policy, Workloads(api), Prometheus(args.prometheus), metrics, apply=args.apply,
                       namespace=args.namespace, cluster=lambda: list_views(core_api(api), api))
    stop = threading.Event()
    while not stop.is_set():
        for outcome in sizer.run_once():
            print(_line(outcome, args.json), flush=True)
        if args.once:
            return 0
        stop.wait(args.interval)
    return 0


def _line(o: Outcome, as_json: bool) -> str:
    if not as_json:
        return f"{o.workload}: {o.note}"
    d = o.decision
    doc: dict[str, object] = {"workload": o.workload, "applied": o.applied, "note": o.note}
    if d is not None:
        doc.update(action=d.action, needRps=round(d.need_rps, 3), peakRps=d.peak_rps, targetRps=d.target_text,
                   current=vars(d.current), wanted=vars(d.wanted), next=vars(d.next))
    return json.dumps(doc)
