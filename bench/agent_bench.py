"""The node agent's hand-off, timed over real gRPC on unix sockets: Allocate, then PreStartContainer
(which asks kubelet's PodResources API for the holder of the ids, reads the pod, checks its slice
and writes the CDI spec with fsync), with `held` pods already holding share devices on a MI300X
CPX node (64 partitions); and one sweep removing the specs of the `starts` pods gone since. The test
kubelet of tests/agent serves Registration and PodResources.

    python bench/agent_bench.py [--held 8 64 200] [--starts 100] [--repeat 3] [--json OUT]

Prints p50/p99 per phase: the median over repeats, with the lowest and highest in brackets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "agent")]  # this checkout's extender; the test kubelet

import grpc  # noqa: E402
from kubelet_fake import FakeKubelet  # noqa: E402

from extender.agent.deviceplugin import DeviceList, DevicePlugin, share_devices  # noqa: E402
from extender.agent.handoff import HandOff  # noqa: E402
from extender.agent.podresources import PodResourcesClient  # noqa: E402
from extender.agent.pods import MemoryPodSource, PodInfo  # noqa: E402
from extender.agent.proto import api_pb2, api_pb2_grpc  # noqa: E402
from extender.agent.topology import read_topology  # noqa: E402
from extender.core.assignment import Assignment, GpuAssignment  # noqa: E402

TOPOLOGY = read_topology(ROOT / "tests" / "fixtures" / "sysfs" / "mi300x-cpx")
SHARES_PER_GPU = 8
GIB = 1 << 30


def pod(n: int) -> PodInfo:
    g = TOPOLOGY.gpus[n % len(TOPOLOGY.gpus)].info
    a = Assignment(node="n1", gpus=(GpuAssignment(index=g.index, id=g.id, cus=frozenset(range(n % 4, 38, 4)),
                                                  burstCus=frozenset(), memoryBytes=GIB, memoryLimitBytes=2 * GIB),),
                   workload_class="memory-bound", policy="p", assignedAt="2026-11-28T19:00:00Z")
    return PodInfo(f"u{n}", "bench", f"p{n}", "n1", annotations={"gpuslice.io/assignment": a.to_json()},
                   share_requests={"main": 1})


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(held: int, starts: int, cdi_parent: Path) -> dict[str, float]:
    short = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    cdi = Path(tempfile.mkdtemp(prefix="gpuslice-bench-cdi", dir=cdi_parent))
    kubelet = FakeKubelet(short, cdi_dir=cdi)
    kubelet.start()
    shares = share_devices(TOPOLOGY, SHARES_PER_GPU)
    pods = MemoryPodSource([pod(n) for n in range(held + starts)])
    handoff = HandOff("n1", pods, PodResourcesClient(str(kubelet.pod_resources_socket)), lambda: TOPOLOGY, cdi)
    devices = DeviceList()
    devices.set(shares)
    plugin = DevicePlugin(short, devices, handoff)
    plugin.check()
    try:
        for n in range(held):  # pods already running
            kubelet.admit("bench", f"p{n}", {"main": [shares[n].id]})
            kubelet.start_container("bench", f"p{n}", "main")
        alloc, pre = [], []
        with grpc.insecure_channel(f"unix://{plugin.socket}") as channel:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            for n in range(held, held + starts):
                ids = [shares[n].id]
                t0 = time.perf_counter()
                resp = stub.Allocate(api_pb2.AllocateRequest(container_requests=[
                    api_pb2.ContainerAllocateRequest(devices_ids=ids)]), timeout=10)
                t1 = time.perf_counter()
                kubelet.pod_devices[("bench", f"p{n}")] = {"main": (ids, resp.container_responses[0])}
                t2 = time.perf_counter()
                stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=ids), timeout=10)
                t3 = time.perf_counter()
                alloc.append((t1 - t0) * 1e3)
                pre.append((t3 - t2) * 1e3)
                kubelet.remove_pod("bench", f"p{n}")  # keep `held` constant
        t0 = time.perf_counter()
        handoff.sweep()
        sweep = (time.perf_counter() - t0) * 1e3
    finally:
        plugin.stop()
        kubelet.stop()
        shutil.rmtree(short, ignore_errors=True)
        shutil.rmtree(cdi, ignore_errors=True)
    return {"allocate_p50_ms": percentile(alloc, 0.5), "allocate_p99_ms": percentile(alloc, 0.99),
            "prestart_p50_ms": percentile(pre, 0.5), "prestart_p99_ms": percentile(pre, 0.99), "sweep_ms": sweep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--held", type=int, nargs="+", default=[8, 64, 200])
    ap.add_argument("--starts", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cdi-parent", type=Path, default=Path("/dev/shm"),
                    help="where the CDI directory is made: tmpfs, as a node's /var/run is (default %(default)s)")
    args = ap.parse_args()
    if max(args.held) + args.starts > len(TOPOLOGY.gpus) * SHARES_PER_GPU:
        ap.error(f"at most {len(TOPOLOGY.gpus) * SHARES_PER_GPU} share devices: lower --held or --starts")
    rows = {}
    print("| held pods | Allocate p50 / p99 ms | PreStartContainer p50 / p99 ms | sweep ms |")
    print("|---|---|---|---|")
    for held in args.held:
        runs = [run(held, args.starts, args.cdi_parent) for _ in range(args.repeat)]
        summary = {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                       "max": max(r[k] for r in runs)} for k in runs[0]}
        rows[held] = summary

        def cell(k: str, s: dict = summary) -> str:
            return f"{s[k]['median']:.2f} [{s[k]['min']:.2f}–{s[k]['max']:.2f}]"

        print(f"| {held} | {cell('allocate_p50_ms')} / {cell('allocate_p99_ms')} | "
              f"{cell('prestart_p50_ms')} / {cell('prestart_p99_ms')} | {cell('sweep_ms')} |")
    if args.json:
        meta = {"starts": args.starts, "repeat": args.repeat, "cdi_parent": str(args.cdi_parent)}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
