"""Real-scheduler throughput: pods bound per second by kube-scheduler at 100 and 1,000 nodes, for
non-GPU pods without and with the extender configured, for GPU pods through the extender, and two
references for the same GPU pods: no extender (kube-scheduler fitting the extended resource itself)
and bench/null_extender.py (an extender served like gpuslice that does no GPU work: what the
extender protocol alone costs). `gpu-dra` runs equivalent GPU pods as DRA claims (32 CUs / 4Gi of a shared MI300X
device, consumable capacity) through kube-scheduler's own DRA allocation, no extender (bench/dra_workload.py).
Per run it also reports the CPU each process spent per scheduled pod and the extender's own mean
answer time per verb.

Needs etcd, kube-apiserver and kube-scheduler in $KUBEBUILDER_ASSETS. Per run, the pods are created
first while no scheduler serves their schedulerName; then kube-scheduler starts and the rate is
measured between the first and the last bind seen on a pod watch (informer start-up excluded). The
scheduler's client rate limit is lifted (qps/burst 5000) in every run, so the API client is not the
bottleneck of one configuration only.

    KUBEBUILDER_ASSETS=/path/to/bin python bench/scheduler_bench.py [--pods 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from kubernetes.watch.watch import iter_resp_lines
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import dra_workload  # noqa: E402
from extender.core.inventory import INVENTORY_ANNOTATION, GpuInfo, format_inventory  # noqa: E402
from extender.kube.client import api_client, core_api  # noqa: E402
from extender.kube.controlplane import ControlPlane, assets_dir, free_port, missing_reason  # noqa: E402

GIB = 2**30
EXTENDER_PROFILE = "gpuslice"  # the schedulerName of every run through the extender
# gpu-no-extender: the same GPU pods (they request the extended resource gpuslice.io/gpu-share, which
# the nodes advertise) with no extender configured: what kube-scheduler and the API server alone
# manage for such pods here, the ceiling for any extender on this machine.
# gpu-null-extender: the same GPU pods through bench/null_extender.py, an extender served like gpuslice
# that does no GPU work (passes every node, scores 0, posts the Binding): what the extender protocol
# alone costs here, so the table separates that from gpuslice's own cost.
# gpu-narrowed-extender: gpuslice with candidate narrowing on (scoring.candidates with the binpack strategy,
# NARROWED_POLICY): filter passes only the best-scored nodes, so kube-scheduler scores, and asks prioritize
# about, only those. Served by a second extender process with its own schedulerName.
SCENARIOS = ("plain-no-extender", "plain-with-extender", "gpu-no-extender", "gpu-null-extender",
             "gpu-with-extender", "gpu-narrowed-extender", "gpu-dra")
NARROWED = "gpu-narrowed-extender"
NARROWED_PROFILE = "gpuslice-narrowed"
NARROWED_POLICY = {"scoring": {"strategy": "binpack", "candidates": {"enabled": True, "tolerance": 0.0,
                                                                    "minNodes": 16, "maxNodes": 16}}}
# gpu-baseline-extender (with --baseline DIR): the same GPU pods through gpuslice served from another
# source tree (e.g. an export of main), so a change is measured before/after within one run.
BASELINE = "gpu-baseline-extender"
BASELINE_PROFILE = "gpuslice-baseline"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(procs: dict[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in procs.items()}
    t = os.times()
    snap["bench"] = t.user + t.system
    return snap


def verb_seconds(port: int) -> dict[str, tuple[float, float, float]]:
    """The extender's own answer time per verb so far: (sum of seconds, count, CPU seconds of the answering
    threads), from its /metrics (the null extender exports the same two families)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
            text = resp.read().decode()
    except OSError:  # a busy machine: the run's figures stand without the per-verb means
        return {}
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            verb = sample.labels.get("verb", "")
            if family.name == "gpuslice_extender_request_duration_seconds" and sample.name.endswith("_sum"):
                out.setdefault(verb, [0.0, 0.0, 0.0])[0] = sample.value
            elif family.name == "gpuslice_extender_request_duration_seconds" and sample.name.endswith("_count"):
                out.setdefault(verb, [0.0, 0.0, 0.0])[1] = sample.value
            elif family.name == "gpuslice_extender_request_cpu_seconds" and sample.name.endswith("_total"):
                out.setdefault(verb, [0.0, 0.0, 0.0])[2] = sample.value
    return {verb: (v[0], v[1], v[2]) for verb, v in out.items()}


def node_body(name: str) -> dict:
    inv = format_inventory([GpuInfo(index=i, id=f"{name}-g{i}", model="MI300X", computeUnits=304, xcds=8,
                                    shaderEngines=32, memoryBytes=192 * GIB, healthy=True) for i in range(8)])
    res = {"cpu": "256", "memory": "2Ti", "pods": "250", "gpuslice.io/gpu-share": "64"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
                         "annotations": {INVENTORY_ANNOTATION: inv}},
            "status": {"capacity": res, "allocatable": res,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Bench"}]}}


def pod_body(name: str, scheduler: str, gpu: bool) -> dict:
    resources: dict = {"requests": {"cpu": "10m", "memory": "16Mi"}}
    annotations = {}
    if gpu:
        resources["limits"] = {"gpuslice.io/gpu-share": "1"}
        annotations = {"gpuslice.io/compute": "100m", "gpuslice.io/memory": "4Gi", "gpuslice.io/class": "compute-bound"}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "true"}, "annotations": annotations},
            "spec": {"schedulerName": scheduler, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "registry.invalid/pause:1", "resources": resources}]}}


def scheduler_config(kubeconfig: Path, name: str, extender_port: int | None, all_nodes: bool = True) -> str:
    """deploy/scheduler-config.yaml for this run; `all_nodes` False restores kube-scheduler's default
    share of nodes to find feasible (DRA pods are scheduled as deployed: no extender to show them all)."""
    cfg = yaml.safe_load((ROOT / "deploy" / "scheduler-config.yaml").read_text())
    cfg["clientConnection"] = {"kubeconfig": str(kubeconfig), "qps": 5000, "burst": 5000}
    cfg["leaderElection"] = {"leaderElect": False}
    cfg["profiles"][0]["schedulerName"] = name
    if not all_nodes:
        del cfg["profiles"][0]["percentageOfNodesToScore"]
    if extender_port is None:
        del cfg["extenders"]
    else:
        cfg["extenders"][0]["urlPrefix"] = f"http://127.0.0.1:{extender_port}/scheduler"
    return yaml.safe_dump(cfg)


class Bench:
    def __init__(self, cp: ControlPlane, workers: int = 16) -> None:
        self.cp = cp
        client = api_client(str(cp.kubeconfig), pool=workers * 2)
        self.api = core_api(client)
        self.pool = ThreadPoolExecutor(workers)
        self.dra = dra_workload.DraObjects(client, self.pool)
        self.nodes = 0

    def ensure_nodes(self, n: int) -> None:
        list(self.pool.map(lambda i: self.api.create_node(node_body(f"node-{i:05d}"), _preload_content=False),
                           range(self.nodes, n)))
        self.nodes = max(self.nodes, n)

    def create_pods(self, ns: str, prefix: str, count: int, scheduler: str, gpu: bool, dra: bool = False) -> None:
        names = [f"{prefix}-{i:05d}" for i in range(count)]
        if dra:  # one claim per pod, made before the pods as kube-controller-manager would
            self.dra.ensure_slices([f"node-{i:05d}" for i in range(self.nodes)])
            self.dra.create_claims(ns, names)
        body = (lambda n: dra_workload.pod_body(n, scheduler)) if dra else (lambda n: pod_body(n, scheduler, gpu))
        list(self.pool.map(lambda n: self.api.create_namespaced_pod(ns, body(n), _preload_content=False), names))

    def delete_pods(self, ns: str) -> None:
        self.api.delete_collection_namespaced_pod(ns, grace_period_seconds=0, label_selector="bench=true")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not self.api.list_namespaced_pod(ns, label_selector="bench=true", limit=1).items:
                break
            time.sleep(0.5)
        self.dra.release_claims(ns)

    def measure(self, ns: str, count: int, config: str, name: str, timeout: float,
                procs: dict[str, int] | None = None) -> dict:
        """Pods/s between the first and the last bind, and the CPU each process used in that span."""
        bound_at: list[float] = []
        cpu: list[dict[str, float]] = []  # snapshots at the first and the last bind
        procs = dict(procs or {})
        errors: list[str] = []
        done = threading.Event()
        rv = self.api.list_namespaced_pod(ns, limit=1).metadata.resource_version

        def watch() -> None:
            seen: set[str] = set()
            last = rv
            deadline = time.monotonic() + timeout
            try:
                while len(seen) < count and time.monotonic() < deadline:  # resume if the server ends the watch
                    resp = self.api.list_namespaced_pod(ns, watch=True, resource_version=last,
                                                        timeout_seconds=int(timeout) + 30, _preload_content=False)
                    for line in iter_resp_lines(resp):
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            raise RuntimeError(f"watch error: {obj}")
                        meta = obj.get("metadata") or {}
                        last = meta.get("resourceVersion") or last
                        if (obj.get("spec") or {}).get("nodeName") and meta.get("uid") not in seen:
                            seen.add(meta.get("uid"))
                            bound_at.append(time.monotonic())
                            if len(seen) == 1 or len(seen) >= count:
                                cpu.append(cpu_snapshot(procs))
                            if len(seen) >= count:
                                break
                    resp.close()
            except Exception as exc:  # a broken watch would under-count: say so in the result
                errors.append(repr(exc))
            finally:
                done.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.3)
        start = time.monotonic()
        procs["kube-scheduler"] = self.cp.start_scheduler(config, name).pid
        done.wait(timeout)
        self.cp.stop_process(name)
        n = len(bound_at)
        span = bound_at[-1] - bound_at[0] if n > 1 else 0.0
        # CPU milliseconds per scheduled pod, by process: where a 2-core machine's time goes.
        cpu_ms = ({k: round(1000 * (cpu[-1][k] - cpu[0][k]) / (n - 1), 2) for k in cpu[0]}
                  if len(cpu) == 2 and n > 1 else {})
        return {"pods": count, "bound": n, "podsPerSecond": round((n - 1) / span, 1) if span > 0 else 0.0,
                "firstBindAfterStartS": round(bound_at[0] - start, 2) if n else None,
                "bindSpanS": round(span, 2), "cpuMsPerPod": cpu_ms, **({"watchError": errors[0]} if errors else {})}


def start_extender(kubeconfig: Path, port: int, logdir: Path, root: Path = ROOT,
                   profile: str = EXTENDER_PROFILE, policy: Path | None = None) -> subprocess.Popen:
    return spawn_server([sys.executable, "-m", "extender", "--log-level", "WARNING", "serve", "--kubeconfig",
                         str(kubeconfig), "--port", str(port), "--threads", "16", "--scheduler-name", profile,
                         *(["--policy", str(policy)] if policy else [])],
                        port, logdir / f"extender-{profile}.log", env={**os.environ, "PYTHONPATH": str(root)},
                        cwd=root)


def start_null_extender(kubeconfig: Path, port: int, logdir: Path) -> subprocess.Popen:
    return spawn_server([sys.executable, str(ROOT / "bench" / "null_extender.py"), "--kubeconfig", str(kubeconfig),
                         "--port", str(port)], port, logdir / "null-extender.log")


def spawn_server(argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    wait_ready(port)
    return proc


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"extender on port {port} did not become ready")


def wait_extender_nodes(port: int, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/ledger", timeout=10) as resp:
            if len(json.loads(resp.read())["nodes"]) >= n:
                return
        time.sleep(0.5)
    raise RuntimeError(f"extender ledger never reached {n} nodes")


def _value(run: dict, key: str, proc: str | None) -> float | None:
    return run.get(key) if proc is None else (run.get(key) or {}).get(proc)


def ratios(results: list[dict], nodes: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    """Issue 14's targets per node count and per gpuslice scenario, from medians over rounds: pods/s
    against kube-scheduler alone (target >= 0.6) and against the null extender (>= 1.0); the extender's
    CPU per pod against the null extender's (<= 1.0); kube-scheduler's CPU per pod against its CPU
    without an extender (<= 1.25). Each also with its spread: min..max of the ratio within a round."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    checks = (("podsPerSecondVsAlone", "gpu-no-extender", "podsPerSecond", None),
              ("podsPerSecondVsNull", "gpu-null-extender", "podsPerSecond", None),
              ("extenderCpuVsNull", "gpu-null-extender", "cpuMsPerPod", "extender"),
              ("schedulerCpuVsAlone", "gpu-no-extender", "cpuMsPerPod", "kube-scheduler"))
    for n in nodes:
        by_round = {(r["scenario"], r["round"]): r for r in results if r["nodes"] == n}
        rounds = sorted({rnd for _, rnd in by_round})
        for scenario in ("gpu-with-extender", NARROWED, BASELINE):
            row: dict[str, float] = {}
            for name, ref, key, proc in checks:
                pairs = [(_value(by_round[(scenario, r)], key, proc), _value(by_round[(ref, r)], key, proc))
                         for r in rounds if (scenario, r) in by_round and (ref, r) in by_round]
                pairs = [(a, b) for a, b in pairs if a is not None and b]
                if not pairs:
                    continue
                row[name] = round(statistics.median(a for a, _ in pairs) / statistics.median(b for _, b in pairs), 3)
                per_round = [a / b for a, b in pairs]
                row[name + "Min"], row[name + "Max"] = round(min(per_round), 3), round(max(per_round), 3)
            if row:
                out.setdefault(str(n), {})[scenario] = row
    return out


def ratio_table(rs: dict[str, dict[str, dict[str, float]]]) -> None:
    table = Table(title="issue 14 ratios (median of rounds; min..max of the per-round ratio)")
    for col in ("nodes", "scenario", "pods/s vs alone (>=0.6)", "pods/s vs null (>=1.0)",
                "extender CPU vs null (<=1.0)", "scheduler CPU vs alone (<=1.25)"):
        table.add_column(col, justify="right" if col != "scenario" else "left")
    for n, by in rs.items():
        for scenario, row in by.items():
            keys = ("podsPerSecondVsAlone", "podsPerSecondVsNull", "extenderCpuVsNull", "schedulerCpuVsAlone")
            cells = [f"{row[k]:.2f} ({row[k + 'Min']:.2f}..{row[k + 'Max']:.2f})" if k in row else "-" for k in keys]
            table.add_row(n, scenario, *cells)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--pods", type=int, default=1000, help="pods per run")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--repeat", type=int, default=3, help="rounds per node count (the median is reported)")
    ap.add_argument("--baseline", metavar="DIR", type=Path,
                    help=f"also run {BASELINE}: gpuslice served from the source tree DIR (before/after in one run)")
    args = ap.parse_args(argv)
    if args.baseline:
        args.scenarios.append(BASELINE)
    reason = missing_reason()
    if reason:
        print(f"scheduler_bench: {reason}", file=sys.stderr)
        return 2
    cp = ControlPlane(assets_dir()).start()  # type: ignore[arg-type]
    port = free_port()
    results: list[dict] = []
    servers: dict[str, tuple[int, subprocess.Popen]] = {}  # scenario -> the extender it runs through (port, process)
    try:
        bench = Bench(cp)
        bench.api.create_namespace({"metadata": {"name": "bench"}})
        if "gpu-dra" in args.scenarios:
            bench.dra.install_class()
        extender = start_extender(cp.kubeconfig, port, cp.workdir)
        servers.update({s: (port, extender) for s in SCENARIOS if s.endswith("with-extender")})
        if args.baseline:
            base_port = free_port()
            servers[BASELINE] = (base_port, start_extender(cp.kubeconfig, base_port, cp.workdir,
                                                           args.baseline.resolve(), BASELINE_PROFILE))
        if NARROWED in args.scenarios:
            narrowed_port, policy_file = free_port(), cp.workdir / "narrowed-policy.yaml"
            policy_file.write_text(yaml.safe_dump(NARROWED_POLICY))
            servers[NARROWED] = (narrowed_port, start_extender(cp.kubeconfig, narrowed_port, cp.workdir,
                                                               profile=NARROWED_PROFILE, policy=policy_file))
        if "gpu-null-extender" in args.scenarios:
            null_port = free_port()
            servers["gpu-null-extender"] = (null_port, start_null_extender(cp.kubeconfig, null_port, cp.workdir))
        for n in args.nodes:
            bench.ensure_nodes(n)
            for p in {p for s, (p, _) in servers.items() if s != "gpu-null-extender"}:
                wait_extender_nodes(p, n)
            # Scenarios interleave within each round, so a busy neighbour on a shared machine hits
            # all of them alike; the table reports the median round.
            for rnd in range(args.repeat):
                for scenario in args.scenarios:
                    sched = f"bench-{n}-{scenario}-{rnd}"
                    gpu = scenario.startswith("gpu")
                    uses_extender = scenario.endswith("with-extender") or scenario in (BASELINE, NARROWED)
                    # As deployed, the extender watches only its own scheduler's pods; runs without it
                    # use a name of their own, which it never sees.
                    profile = {BASELINE: BASELINE_PROFILE, NARROWED: NARROWED_PROFILE}.get(scenario, EXTENDER_PROFILE) \
                        if uses_extender else sched
                    bench.create_pods("bench", sched, args.pods, profile, gpu, dra=scenario == "gpu-dra")
                    server = servers.get(scenario)
                    cfg = scheduler_config(cp.kubeconfig, profile, server[0] if server else None,
                                           all_nodes=scenario != "gpu-dra")
                    before = verb_seconds(server[0]) if server else {}
                    r = bench.measure("bench", args.pods, cfg, sched, args.timeout, procs={
                        "etcd": cp.procs["etcd"].pid, "kube-apiserver": cp.procs["kube-apiserver"].pid,
                        **({"extender": server[1].pid} if server else {})})
                    r.update(nodes=n, scenario=scenario, round=rnd)
                    if before:  # mean time the extender took to answer each verb in this run (ms)
                        after = verb_seconds(server[0])  # type: ignore[index]
                        r["extenderMeanMs"] = {
                            verb: round(1000 * (after[verb][0] - t0) / (after[verb][1] - c0), 2)
                            for verb, (t0, c0, _) in before.items() if verb in after and after[verb][1] > c0}
                        # the answering thread's CPU per call: the rest of the mean is waiting
                        r["extenderCpuMs"] = {
                            verb: round(1000 * (after[verb][2] - u0) / (after[verb][1] - c0), 2)
                            for verb, (_, c0, u0) in before.items() if verb in after and after[verb][1] > c0}
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    bench.delete_pods("bench")
    finally:
        for proc in {proc for _, proc in servers.values()}:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        cp.stop()
    table = Table(title=f"kube-scheduler throughput ({args.pods} pods per run, median of {args.repeat}, "
                        f"{os.cpu_count()} CPUs, control plane + extender on one machine)")
    for col in ("nodes", "scenario", "pods/s (median)", "runs (pods/s)", "all bound",
                "CPU ms/pod: scheduler, apiserver+etcd, extender", "extender ms: filter, prioritize, bind",
                "extender CPU ms: filter, prioritize, bind"):
        table.add_column(col, justify="right" if col != "scenario" else "left")
    medians: dict[str, dict[str, float]] = {}
    for n in args.nodes:
        for scenario in args.scenarios:
            runs = [r for r in results if r["nodes"] == n and r["scenario"] == scenario]
            rates = [r["podsPerSecond"] for r in runs]
            med = statistics.median(rates)
            medians.setdefault(str(n), {})[scenario] = med
            mid = sorted(runs, key=lambda r: r["podsPerSecond"])[len(runs) // 2]  # the median run's details
            cpu = mid.get("cpuMsPerPod") or {}
            verbs = mid.get("extenderMeanMs") or {}
            verbs_cpu = mid.get("extenderCpuMs") or {}
            table.add_row(str(n), scenario, f"{med:.1f}", ", ".join(f"{x:.0f}" for x in rates),
                          "yes" if all(r["bound"] == r["pods"] for r in runs) else "NO",
                          f"{cpu.get('kube-scheduler', 0):.1f}, "
                          f"{cpu.get('kube-apiserver', 0) + cpu.get('etcd', 0):.1f}, "
                          + (f"{cpu['extender']:.1f}" if "extender" in cpu else "-"),
                          ", ".join(f"{verbs[v]:.1f}" if v in verbs else "-" for v in ("filter", "prioritize", "bind")),
                          ", ".join(f"{verbs_cpu[v]:.2f}" if v in verbs_cpu else "-"
                                    for v in ("filter", "prioritize", "bind")))
    Console().print(table)
    summary: dict = {"cpus": os.cpu_count(), "podsPerRun": args.pods, "repeat": args.repeat,
                     "medianPodsPerSecond": medians, "results": results}
    for n, by in medians.items():
        if by.get("plain-no-extender") and "plain-with-extender" in by:
            summary[f"plainRatio@{n}"] = round(by["plain-with-extender"] / by["plain-no-extender"], 3)
    summary["ratios"] = ratios(results, args.nodes)
    print(json.dumps(summary, indent=2))
    if summary["ratios"]:
        ratio_table(summary["ratios"])
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
