"""The agent's poll with DRA on: the slice follows the GPUs' health, the plugin is served after the
checkpoint is restored, and the agent is ready once kubelet registered the driver."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from extender.agent.dra.agent import DraAgent, DraConfig
from extender.agent.dra.slices import DRIVER, device_name
from extender.agent.pods import MemoryActions, MemoryPodSource
from extender.agent.runner import Agent, AgentConfig, MemoryPublisher
from extender.core.policy import Policy
from tests.agent.dra_kubelet import ClaimRef, TestKubelet
from tests.agent.test_dra_plugin import Claims, allocated_claim
from tests.agent.test_dra_slices import Store

GIB = 2**30


def make_agent(root: Path, base: Path, store: Store, claims: Claims) -> Agent:
    agent = Agent(AgentConfig(node="gpu-node-1", root=str(root), plugin_dir=str(base / "dp"), interval=1),
                  MemoryPodSource(), MemoryActions(), MemoryPublisher())
    cfg = DraConfig(str(base / "registry"), str(base / "plugins" / DRIVER), str(base / "cdi"))
    policy = Policy()
    agent.dra = DraAgent("gpu-node-1", str(root), cfg, lambda: agent.topology, lambda: policy, store, claims)
    return agent


def test_poll_publishes_serves_and_follows_health(host) -> None:
    root = host("mi300x-spx")
    base = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))  # unix socket paths must stay short
    store, claims = Store(), Claims()
    agent = make_agent(root, base, store, claims)
    try:
        agent.poll_once()
        assert agent.dra is not None and not agent.dra.ready()
        kubelet = TestKubelet(base / "registry")
        kubelet.register()
        assert agent.dra.ready()
        gpu = device_name(agent.topology.gpus[1].info)
        ref = ClaimRef("default", "c-1", "c")
        claims.add(allocated_claim(ref, [("gpu", gpu, 64, 8 * GIB)]))
        assert kubelet.prepare(ref).claims[ref.uid].error == ""

        (root / "sys/bus/pci/devices/0000:26:00.0/ras/umc_err_count").write_text("ue: 1\nce: 0\n")
        agent.poll_once()
        devices = store.objects["gpu-node-1-gpu.gpuslice.io"]["spec"]["devices"]
        assert [d["attributes"]["healthy"]["bool"] for d in devices][:2] == [True, False]

        again = ClaimRef("default", "c-2", "c2")
        claims.add(allocated_claim(again, [("gpu", gpu, 64, 8 * GIB)]))
        assert "unhealthy" in kubelet.prepare(again).claims[again.uid].error
    finally:
        agent.plugin.stop()
        agent.dra.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_restarted_agent_restores_before_it_serves(host) -> None:
    root = host("mi300x-spx")
    base = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))
    store, claims = Store(), Claims()
    first = make_agent(root, base, store, claims)
    try:
        first.poll_once()
        kubelet = TestKubelet(base / "registry")
        kubelet.register()
        gpu = device_name(first.topology.gpus[0].info)
        ref = ClaimRef("default", "c-1", "c")
        claims.add(allocated_claim(ref, [("gpu", gpu, 128, 8 * GIB)]))
        before = first.dra.preparer.prepared()[0] if kubelet.prepare(ref) else None
        first.dra.stop()
        second = make_agent(root, base, store, claims)
        assert not second.dra.preparer.restored
        second.poll_once()
        kubelet.register()
        assert second.dra.preparer.prepared() == [before]
        assert second.dra.preparer.ledger.node("gpu-node-1").gpu(0).slices[0].cus == before.assignment.gpus[0].cus
        second.dra.stop()
        second.plugin.stop()
    finally:
        first.plugin.stop()
        shutil.rmtree(base, ignore_errors=True)
