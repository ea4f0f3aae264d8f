"""Extender memory: RSS of the synced engine at 5,000 nodes x 8 MI300X GPUs with 100,000 bound pods,
and RSS over an hour-equivalent of churn (pods created through filter, prioritize and bind, and
deleted, continuously).

Two steps, so the figure is a fresh process's, as a restarted extender's would be:
`build` places the pods with the engine's own placement (realistic tenant mix of
bench/extender_bench.py) and writes the pods as JSON lines; `measure` (run in a child process)
reads them into the cluster cache, syncs the engine from it, and reports RSS (VmRSS, /proc) with
tracemalloc's live bytes per file and per line (`--tracemalloc`; with churn, also what grew over it by
line, the synced snapshot against the last; it slows the run and adds its own memory, so the RSS
rows come from a run without it). The child first imports what `gpuslice serve` imports, so
the first row is the server's own baseline. The churn then deletes a random bound pod and schedules
a new one per step: filter over a random sample of `--sample` nodes, prioritize, bind, and the watch's
echo of the bound pod (its API JSON through pod_view into the cache, then observed). The default
10,800 steps are one hour at 3 pods/s created and 3 deleted (a 100,000-pod cluster turning over
11% an hour). RSS is sampled every `--every` steps; drift is the last sample against the first,
and the spread is the largest deviation from the first, both in %.

    python bench/memory_bench.py [--nodes 5000] [--pods 100000] [--churn 10800] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import orjson  # noqa: E402
from extender_bench import MIX, Shape, draw  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from extender.core.assignment import ASSIGNMENT_ANNOTATION  # noqa: E402
from extender.core.ledger import Ledger, PodRef  # noqa: E402
from extender.core.policy import parse_policy  # noqa: E402
from extender.core.requests import parse_slice_request  # noqa: E402
from extender.engine.cluster import PodView  # noqa: E402
from extender.engine.demo import gpu_node, mi300x_inventory  # noqa: E402
from extender.engine.placement import build_assignment, evaluate  # noqa: E402
from extender.engine.policy_store import PolicyStore  # noqa: E402
from extender.engine.scheduler import Engine  # noqa: E402
from extender.kube.cluster import KubeCluster  # noqa: E402
from extender.kube.views import pod_view  # noqa: E402

MIB = 2**20
# On a node the mix has nearly filled: its smallest shape, then a smaller one (20 tenants per node is dense).
FALLBACK = (next(s for s in MIX if s.name == "embedding"), Shape("embedding-small", 0, "50m", "4Gi", "compute-bound"))


def rss_mib() -> float:
    """Resident set size of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def node_name(i: int) -> str:
    return f"gpu-{i:05d}"


def build(nodes: int, pods: int, seed: int, out: Path, console: Console) -> None:
    """Place `pods` tenants over `nodes` nodes, round-robin, with the engine's placement; write them."""
    rng = random.Random(seed)
    policy = parse_policy({})
    ledger = Ledger(policy.burst.sharedFraction, policy.overcommit.memory)
    for i in range(nodes):
        ledger.set_node(node_name(i), mi300x_inventory(node_name(i)))
    placed = misses = 0
    open_nodes = list(range(nodes))
    t0 = time.perf_counter()
    partial = out.with_suffix(".partial")
    with partial.open("w") as f:
        while placed < pods:
            if not open_nodes:
                raise RuntimeError(f"only {placed} of {pods} pods fit on {nodes} nodes")
            i = open_nodes[rng.randrange(len(open_nodes))]
            for shape in (draw(rng), *FALLBACK):
                ann = shape.annotations(rng)
                req = parse_slice_request({}, ann, policy)
                assert req is not None
                fit = evaluate(req, ledger.node(node_name(i)), policy)
                if fit.ok:
                    break
                misses += 1
            if not fit.ok:
                open_nodes.remove(i)
                continue
            uid = str(uuid.UUID(int=rng.getrandbits(128)))
            a = build_assignment(req, node_name(i), fit.choices, policy)
            ledger.reserve(PodRef(uid, "bench", f"t-{uid[:8]}"), a, req.workload_class, req.compute_millis, None)
            f.write(json.dumps({"uid": uid, "name": f"t-{uid[:8]}", "node": node_name(i),
                                "annotations": {**ann, ASSIGNMENT_ANNOTATION: a.to_json()}}) + "\n")
            placed += 1
    partial.rename(out)
    console.log(f"built {placed} pods on {nodes} nodes in {time.perf_counter() - t0:.0f}s ({misses} misses)")


def watched(uid: str, name: str, rv: int, node: str, annotations: dict[str, str],
            labels: dict[str, str]) -> PodView:
    """A bound pod as the API server sends it (the fields pod_view reads), decoded as the watch decodes
    it: every string its own object, as it comes off the wire."""
    wire = orjson.dumps({"metadata": {"uid": uid, "namespace": "bench", "name": name, "resourceVersion": str(rv),
                                      "annotations": annotations, "labels": labels},
                         "spec": {"nodeName": node, "schedulerName": "gpuslice"},
                         "status": {"phase": "Running"}})
    return pod_view(orjson.loads(wire))


class WatchCache(KubeCluster):
    """The extender's own cluster cache (kube/cluster.KubeCluster, with its indexes), filled as
    kube/watch.py fills it. No API server: a Binding is taken as written, and what it wrote is kept in
    `written` for the churn's watch echo."""

    def __init__(self) -> None:
        super().__init__(api=None)  # type: ignore[arg-type]
        self.written: dict[str, tuple[str, dict[str, str]]] = {}

    def _bind_pod(self, pod: PodView, node: str, annotations: Any) -> None:
        self.written[pod.uid] = (node, dict(annotations))


def load(nodes: int, path: Path) -> WatchCache:
    """The cluster cache as the watch's listings fill it: node views, then bound pod views."""
    cluster = WatchCache()
    cluster.replace_nodes([gpu_node(node_name(i)) for i in range(nodes)])
    with path.open() as f:
        cluster.replace_pods([watched(p["uid"], p["name"], 1000 + i, p["node"], p["annotations"],
                                      {"app": p["name"][:3]}) for i, p in enumerate(map(orjson.loads, f))])
    return cluster


def _where(stat: tracemalloc.Statistic | tracemalloc.StatisticDiff, lines: bool) -> str:
    frame = stat.traceback[0]
    name = frame.filename.removeprefix(str(BENCH.parent) + "/")
    return f"{name}:{frame.lineno}" if lines else name


def top_files(snapshot: tracemalloc.Snapshot, limit: int = 12, lines: bool = False) -> list[dict[str, Any]]:
    """Live bytes by file (or by file:line), largest first."""
    stats = snapshot.statistics("lineno" if lines else "filename")[:limit]
    return [{"file": _where(s, lines), "mib": round(s.size / MIB, 1), "blocks": s.count} for s in stats]


def top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, limit: int = 12) -> list[dict[str, Any]]:
    """What grew between two snapshots, by file:line, largest growth first."""
    diff = sorted(after.compare_to(before, "lineno"), key=lambda d: d.size_diff, reverse=True)[:limit]
    return [{"file": _where(d, True), "kib": round(d.size_diff / 1024, 1), "blocks": d.count_diff} for d in diff]


def levers(engine: Engine) -> dict[str, Any]:
    """What each representation of the ledger's CU sets would hold, from the synced ledger: every
    set a frozenset (as before core/cuset.py), identical frozensets interned (one object per value),
    and CuSets (one mask each, as now). Sizes by sys.getsizeof, plus 28 bytes per member >= 256
    (ints below that are shared by the interpreter)."""
    def fs_bytes(bits: frozenset[int]) -> int:
        f = frozenset(bits)
        return sys.getsizeof(f) + 28 * sum(1 for b in f if b >= 256)

    refs: dict[int, Any] = {}  # id -> set, each object once
    for state in engine.ledger.nodes():
        for g in state.gpus:
            for cus in (g.shared, g.guaranteed, g.bursting, g.free_cus, g.burst_cus):
                refs[id(cus)] = cus
            for sl in g.slices:
                refs[id(sl.cus)], refs[id(sl.burst)] = sl.cus, sl.burst
    sizes = {}
    for cus in refs.values():
        key = frozenset(cus)
        if key not in sizes:
            sizes[key] = fs_bytes(key)
    every = sum(sizes[frozenset(c)] for c in refs.values())
    masks = sum(sys.getsizeof(c) + sys.getsizeof(getattr(c, "bits", 0)) for c in refs.values())
    return {"sets": len(refs), "distinct": len(sizes), "frozensetMiB": round(every / MIB, 1),
            "internedMiB": round(sum(sizes.values()) / MIB, 1), "cusetMiB": round(masks / MIB, 1)}


def churn(engine: Engine, cluster: WatchCache, nodes: int, steps: int, every: int, sample: int,
          seed: int, console: Console) -> list[dict[str, float]]:
    """Delete a random bound pod and schedule a new one, `steps` times; RSS every `every` steps."""
    rng = random.Random(seed + 1)
    uids = [p.uid for p in cluster.list_pods()]
    rv = 1000 + len(uids)  # resourceVersions after the listing's
    names = [node_name(i) for i in range(nodes)]
    samples = [{"step": 0, "rssMiB": round(rss_mib(), 1), "pods": len(uids)}]
    bound = unschedulable = 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        victim = uids.pop(rng.randrange(len(uids)))
        cluster.drop_pod(cluster._pods[victim])  # the watch's delete
        engine.forget_pod(victim)
        uid = str(uuid.UUID(int=rng.getrandbits(128)))
        pod = PodView(uid, "bench", f"c-{uid[:8]}", annotations=draw(rng).annotations(rng))
        cluster.put_pod(pod)  # the watch's add
        passed = engine.filter(pod, names=rng.sample(names, sample)).passed
        if passed:
            best = max(engine.prioritize(pod, names=passed), key=lambda s: s[1])[0]
            error = engine.bind(pod.namespace, pod.name, pod.uid, best)
            if error:
                raise RuntimeError(f"bind failed: {error}")
            # The watch's echo of the bind: the bound pod as the API server sends it replaces the cache's
            # copy, and the engine observes it (kube/watch.py).
            node, written = cluster.written.pop(uid)
            echo = watched(uid, pod.name, rv + step, node, {**pod.annotations, **written}, dict(pod.labels))
            cluster.put_pod(echo)
            engine.observe_pod(echo)
            uids.append(uid)
            bound += 1
        else:
            cluster.drop_pod(pod)
            unschedulable += 1
        if step % every == 0:
            samples.append({"step": step, "rssMiB": round(rss_mib(), 1), "pods": len(uids)})
            console.log(f"churn step {step}: RSS {samples[-1]['rssMiB']} MiB, {len(uids)} pods, "
                        f"{step / (time.perf_counter() - t0):.0f} steps/s")
    console.log(f"churn: {bound} bound, {unschedulable} unschedulable")
    return samples


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    import extender.serve_cli  # noqa: F401 - everything `gpuslice serve` loads, so the baseline is the server's

    gc.collect()
    base = rss_mib()
    if args.tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    cluster = load(args.nodes, Path(args.data))
    loaded = rss_mib()
    engine = Engine(cluster, PolicyStore(parse_policy({})))
    problems = engine.sync()
    assert not problems, problems[:3]
    # the GPU index and cached per-GPU answers are filled as the first requests would fill them
    gc.collect()
    out: dict[str, Any] = {
        "nodes": args.nodes, "pods": len(cluster.list_pods()), "syncSeconds": round(time.perf_counter() - t0, 1),
        "rssMiB": {"interpreter": round(base, 1), "cache": round(loaded, 1), "synced": round(rss_mib(), 1)}}
    if args.levers:
        out["levers"] = levers(engine)
    if args.tracemalloc:
        snap = tracemalloc.take_snapshot()
        out["tracedMiB"] = round(sum(s.size for s in snap.statistics("filename")) / MIB, 1)
        out["topFiles"] = top_files(snap)
        out["topLines"] = top_files(snap, 20, lines=True)
        if not args.churn:
            tracemalloc.stop()
    console.log(f"synced {out['pods']} pods in {out['syncSeconds']}s: RSS {out['rssMiB']}")
    if args.churn:
        samples = churn(engine, cluster, args.nodes, args.churn, args.every, args.sample, args.seed, console)
        if args.tracemalloc:  # what the churn left behind, against the synced snapshot
            gc.collect()
            end = tracemalloc.take_snapshot()
            out["churnGrowth"] = top_growth(snap, end)
            out["churnTracedKiB"] = round(sum(d.size_diff for d in end.compare_to(snap, "filename")) / 1024, 1)
            tracemalloc.stop()
        first = samples[0]["rssMiB"]
        out["churn"] = {"steps": args.churn, "sample": args.sample, "samples": samples,
                        "driftPct": round(100 * (samples[-1]["rssMiB"] - first) / first, 2),
                        "spreadPct": round(max(abs(s["rssMiB"] - first) for s in samples) * 100 / first, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods", type=int, default=100_000)
    p.add_argument("--churn", type=int, default=10_800, help="churn steps (0: none)")
    p.add_argument("--every", type=int, default=540, help="RSS sample interval in churn steps")
    p.add_argument("--sample", type=int, default=200, help="nodes offered to filter per churn step")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", help="pods file (built if missing)")
    p.add_argument("--tracemalloc", action="store_true", help="also report live bytes per file")
    p.add_argument("--levers", action="store_true", help="also size the CU sets as frozensets, interned, CuSets")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    if args.child:
        print(json.dumps(measure(args, console)))
        return 0
    data = Path(args.data or f"/tmp/gpuslice-memory-{args.nodes}x{args.pods}-{args.seed}.jsonl")
    if not data.exists():
        build(args.nodes, args.pods, args.seed, data, console)
    argv_child = [sys.executable, __file__, "--child", "--data", str(data), *(argv or sys.argv[1:])]
    done = subprocess.run(argv_child, stdout=subprocess.PIPE, check=True, text=True)
    out = json.loads(done.stdout)
    table = Table(title=f"gpuslice extender memory: {out['nodes']} nodes x 8 MI300X, {out['pods']} bound pods")
    table.add_column("what")
    table.add_column("RSS MiB", justify="right")
    for key, label in (("interpreter", "interpreter + imports"), ("cache", "+ cluster cache (pod/node views)"),
                       ("synced", "+ synced engine (ledger, GPU index)")):
        table.add_row(label, f"{out['rssMiB'][key]:.0f}")
    for f in out.get("topFiles", []):
        table.add_row(f"  traced: {f['file']}", f"{f['mib']:.1f}")
    for f in out.get("topLines", []):
        table.add_row(f"  traced: {f['file']}", f"{f['mib']:.1f}")
    for f in out.get("churnGrowth", []):
        table.add_row(f"  churn grew: {f['file']} (KiB, {f['blocks']:+d} blocks)", f"{f['kib']:+.0f}")
    if "churnTracedKiB" in out:
        table.add_row("  churn: traced bytes, last against synced (KiB, all lines)", f"{out['churnTracedKiB']:+.0f}")
    if "levers" in out:
        lv = out["levers"]
        table.add_row(f"CU sets in the ledger ({lv['sets']} objects, {lv['distinct']} distinct): as frozensets",
                      f"{lv['frozensetMiB']:.0f}")
        table.add_row("  as interned frozensets (one object per value)", f"{lv['internedMiB']:.0f}")
        table.add_row("  as CuSets (one bit mask each)", f"{lv['cusetMiB']:.0f}")
    if "churn" in out:
        c = out["churn"]
        table.add_row(f"churn {c['steps']} steps: first / last sample",
                      f"{c['samples'][0]['rssMiB']:.0f} / {c['samples'][-1]['rssMiB']:.0f}")
        table.add_row("churn drift / largest deviation (%)", f"{c['driftPct']:+.1f} / {c['spreadPct']:.1f}")
    Console(width=120).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
