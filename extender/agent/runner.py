"""`gpuslice agent run`: the agent's poll loop, and its health/metrics HTTP endpoint.

Each poll (default every 5 s): re-read the KFD topology and patch the node's inventory annotation
when it changed (a GPU disappeared or turned unhealthy, the partition mode changed); push the
share devices to ListAndWatch; keep the device plugin registered with kubelet; remove CDI specs
no container holds any more; write dmem.max for assigned pods; sample VRAM and act on breaches.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from waitress.server import create_server

from extender.agent.cdi import DEFAULT_SPEC_DIR
from extender.agent.deviceplugin import DEFAULT_PLUGIN_DIR, DeviceList, DevicePlugin, share_devices
from extender.agent.dra.agent import DraAgent, DraConfig
from extender.agent.enforcement import MemoryEnforcer
from extender.agent.handoff import HandOff
from extender.agent.metrics import AgentMetrics
from extender.agent.podresources import DEFAULT_SOCKET, DeviceHolders, PodResourcesClient
from extender.agent.pods import ClusterActions, PodSource
from extender.agent.topology import Topology, read_topology
from extender.agent.vram import sample_vram
from extender.core.inventory import format_inventory
from extender.core.policy import Policy, PolicyError, load_policy

log = logging.getLogger(__name__)


class NodePublisher(Protocol):
    def publish_inventory(self, node: str, text: str) -> None: ...


class MemoryPublisher:
    def __init__(self) -> None:
        self.published: list[str] = []

    def publish_inventory(self, node: str, text: str) -> None:
        self.published.append(text)


@dataclass(frozen=True)
class AgentConfig:
    node: str
    root: str = "/"
    plugin_dir: str = DEFAULT_PLUGIN_DIR
    shares_per_gpu: int = 16
    interval: float = 5.0
    memory_action: str = "monitor"
    pod_resources_socket: str = DEFAULT_SOCKET
    cdi_dir: str = DEFAULT_SPEC_DIR


class Agent:
    def __init__(self, cfg: AgentConfig, pods: PodSource, actions: ClusterActions, publisher: NodePublisher,
                 metrics: AgentMetrics | None = None, holders: DeviceHolders | None = None) -> None:
        self.cfg = cfg
        self.pods = pods
        self.publisher = publisher
        self.metrics = metrics or AgentMetrics()
        self.topology = Topology(())
        self.devices = DeviceList()
        self.handoff = HandOff(cfg.node, pods, holders or PodResourcesClient(cfg.pod_resources_socket),
                               lambda: self.topology, cfg.cdi_dir, actions, self.metrics)
        self.plugin = DevicePlugin(cfg.plugin_dir, self.devices, self.handoff, metrics=self.metrics)
        self.enforcer = MemoryEnforcer(cfg.root, actions, self.metrics, cfg.memory_action)
        self.published: str | None = None
        self.last_poll = 0.0
        self.dra: DraAgent | None = None  # set by run_cmd with --dra

    def refresh_inventory(self) -> bool:
        """Re-read the topology; patch the annotation when it changed. Returns True when it published."""
        self.topology = read_topology(self.cfg.root)
        healthy = sum(g.info.healthy for g in self.topology.gpus)
        self.metrics.gpus.labels("healthy").set(healthy)
        self.metrics.gpus.labels("unhealthy").set(len(self.topology.gpus) - healthy)
        if self.devices.set(share_devices(self.topology, self.cfg.shares_per_gpu)):
            log.info("advertising %d %s devices", self.cfg.shares_per_gpu * healthy, "healthy share")
        text = format_inventory(self.topology.inventory())
        if text == self.published:
            return False
        try:
            self.publisher.publish_inventory(self.cfg.node, text)
        except Exception as exc:  # retried next poll
            self.metrics.publishes.labels("error").inc()
            log.error("cannot publish inventory on node %s: %s", self.cfg.node, exc)
            return False
        self.metrics.publishes.labels("ok").inc()
        log.info("published inventory for node %s: %d GPUs (%d healthy)", self.cfg.node,
                 len(self.topology.gpus), healthy)
        self.published = text
        return True

    def poll_once(self) -> None:
        self.refresh_inventory()
        if self.dra is not None:
            self.dra.poll(self.topology)
        if self.plugin.check():
            self.metrics.registrations.inc()
        self.handoff.sweep()
        pods = self.pods.pods_on_node(self.cfg.node)
        handed_out = {c.pod.uid: c.assignment for c in self.handoff.claims()}
        self.enforcer.apply_dmem(pods, self.topology, handed_out)
        self.enforcer.check(sample_vram(self.cfg.root), pods, self.topology, handed_out)
        self.last_poll = time.monotonic()

    def alive(self) -> bool:
        return self.last_poll > 0 and time.monotonic() - self.last_poll < 3 * self.cfg.interval + 10

    def ready(self) -> bool:
        return self.published is not None and self.plugin.registered and (self.dra is None or self.dra.ready())

    def run(self, stop: threading.Event) -> None:
        log.info(self.enforcer.startup_message())
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # one bad poll (API down, racing sysfs) must not kill the agent
                log.exception("agent poll failed")
            stop.wait(self.cfg.interval)
        self.plugin.stop()
        if self.dra is not None:
            self.dra.stop()


def health_app(agent: Agent) -> Flask:
    app = Flask("gpuslice-agent")

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return ("ok\n", 200) if agent.alive() else ("no successful poll recently\n", 503)

    @app.get("/readyz")
    def readyz() -> tuple[str, int]:
        if agent.ready():
            return "ready\n", 200
        why = "inventory not published" if agent.published is None else "not registered with kubelet"
        return f"{why}\n", 503

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(agent.metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def add_run_parser(asub: argparse._SubParsersAction) -> None:
    run = asub.add_parser("run", help="run the node agent (DaemonSet entry point)")
    run.add_argument("--node-name", required=True, help="this node's name (downward API spec.nodeName)")
    run.add_argument("--root", default="/", help="where the host's /sys and /proc are mounted (default /)")
    run.add_argument("--plugin-dir", default=DEFAULT_PLUGIN_DIR, help="kubelet's device-plugin socket directory")
    run.add_argument("--pod-resources-socket", default=DEFAULT_SOCKET,
                     help="kubelet's PodResources API socket (which pod holds which devices)")
    run.add_argument("--cdi-dir", default=DEFAULT_SPEC_DIR,
                     help="CDI spec directory, for device-plugin slices and prepared DRA claims (default %(default)s)")
    run.add_argument("--shares-per-gpu", type=int, default=16, help="gpu-share devices advertised per GPU")
    run.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    run.add_argument("--port", type=int, default=9402, help="health and metrics port")
    run.add_argument("--policy", help="policy file (memoryEnforcement.action); default: monitor")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config)")
    run.add_argument("--dra", action="store_true",
                     help="also publish a ResourceSlice and serve the kubelet DRA plugin (driver gpu.gpuslice.io)")
    run.add_argument("--dra-registry-dir", default=DraConfig.registry_dir, help="kubelet's plugins_registry")
    run.add_argument("--dra-plugin-dir", default=DraConfig.plugin_dir, help="DRA socket and checkpoint directory")
    run.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    from extender.agent.kube import KubeAdapter, load_core_api

    policy = Policy()
    if args.policy and not Path(args.policy).exists():
        log.warning("policy file %s not found; VRAM breaches are monitored, not evicted", args.policy)
    elif args.policy:
        try:
            policy = load_policy(args.policy)
        except PolicyError as exc:
            log.error("%s", exc)
            return 1
    action = policy.memoryEnforcement.action
    if args.shares_per_gpu < 1 or not Path(args.root).is_dir():
        log.error("--shares-per-gpu must be >= 1 and --root a directory")
        return 1
    kube = KubeAdapter(load_core_api(args.kubeconfig), args.node_name)
    cfg = AgentConfig(node=args.node_name, root=args.root, plugin_dir=args.plugin_dir,
                      shares_per_gpu=args.shares_per_gpu, interval=args.interval, memory_action=action,
                      pod_resources_socket=args.pod_resources_socket, cdi_dir=args.cdi_dir)
    agent = Agent(cfg, kube, kube, kube)
    if args.dra:
        from extender.agent.dra.kube import DraKube, api_client

        dra_kube = DraKube(api_client(args.kubeconfig))
        agent.dra = DraAgent(args.node_name, args.root, DraConfig(args.dra_registry_dir, args.dra_plugin_dir,
                                                                  args.cdi_dir),
                             lambda: agent.topology, lambda: policy, dra_kube, dra_kube, dra_kube, pods=kube)
    server = create_server(health_app(agent), host="0.0.0.0", port=args.port, threads=2)
    threading.Thread(target=server.run, name="agent-http", daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        agent.run(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        server.close()
    return 0
