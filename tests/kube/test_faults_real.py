"""Faults on a real control plane (issue 12), each followed by an audit of the cluster: extender
SIGKILL mid-burst, kube-apiserver restart mid-burst, pods deleted mid-burst, leader failover (the
leading kube-scheduler and its extender SIGKILLed, the standby pair takes over). Own control plane
(module scope), so the faults never touch the shared one; skipped without $KUBEBUILDER_ASSETS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from extender.kube.controlplane import ControlPlane, free_port
from tests.kube.conftest import Env, Extender, gpu_node_body, gpu_pod_body, scheduler_config, start_control_plane
from tests.kube.test_real_scheduler import assert_consistent, bound, create_pods, delete_pods, pods, wait_for

NODES = 6  # x 2 GPUs; 100m slices (32 CUs): 12 GPUs hold far more than a burst, so every pod fits
BURST = 40


@pytest.fixture(scope="module")
def fault_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cp = start_control_plane()
    extender = Extender(cp.kubeconfig, free_port(), tmp_path_factory.mktemp("fault-extender"))
    try:
        extender.start()
        cp.start_scheduler(scheduler_config(cp.kubeconfig, extender.port))
        env = Env(cp, extender)
        for i in range(NODES):
            env.api.create_node(gpu_node_body(f"f{i}"))
        wait_for("nodes in the ledger", lambda: len(extender.get("/debug/ledger")["nodes"]) >= NODES)
        yield env
    finally:
        extender.kill()
        cp.stop()


@pytest.fixture
def env(fault_env: Env) -> Iterator[Env]:
    yield fault_env
    delete_pods(fault_env, [p["metadata"]["name"] for p in pods(fault_env)])


def burst(prefix: str, n: int = BURST) -> list[dict]:
    # At most 2 memory-bound tenants per GPU (the default policy): a quarter of the burst is.
    return [gpu_pod_body(f"{prefix}{i}", compute="100m", memory="8Gi",
                         cls="memory-bound" if i % 4 == 0 else "compute-bound") for i in range(n)]


def start_burst(env: Env, bodies: list[dict]) -> threading.Thread:
    creator = threading.Thread(target=create_pods, args=(env, bodies))
    creator.start()
    wait_for("first binds", lambda: len(bound(env)) >= 3, timeout=60)
    return creator


def test_extender_sigkill_mid_burst(env: Env) -> None:
    creator = start_burst(env, burst("k"))
    env.extender.kill()
    creator.join()
    at_kill = len(bound(env))
    time.sleep(2)
    assert len(bound(env)) == at_kill  # nothing is bound while the extender is down
    start = time.monotonic()
    env.extender.start()
    wait_for(f"all {BURST} pods bound", lambda: len(bound(env)) == BURST, timeout=120)
    print(f"\nextender SIGKILL: {at_kill} bound before, the rest {time.monotonic() - start:.1f}s after restart")
    assert_consistent(env)


def test_kube_apiserver_restart_mid_burst(env: Env) -> None:
    creator = start_burst(env, burst("a"))
    creator.join()
    env.cp.kill("kube-apiserver")
    time.sleep(2)
    env.cp.restart("kube-apiserver")
    back = time.monotonic()
    if env.cp.procs["kube-scheduler"].poll() is not None:  # it lost its lease meanwhile: its pod restarts it
        env.cp.restart("kube-scheduler")
    wait_for(f"all {BURST} pods bound", lambda: len(bound(env)) == BURST, timeout=120)
    print(f"\nkube-apiserver restart: all bound {time.monotonic() - back:.1f}s after it was back")
    wait_for("ledger settled", lambda: _settled(env), timeout=30)
    assert_consistent(env)


def test_pods_deleted_mid_burst(env: Env) -> None:
    bodies = burst("d")
    creator = start_burst(env, bodies)
    doomed = [b["metadata"]["name"] for b in bodies[::3]]  # about a third, bound or not
    for name in doomed:
        try:
            env.api.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        except Exception:  # not created yet: the creator makes it after; deleted below
            pass
    creator.join()
    delete_pods(env, doomed)
    wait_for("the rest bound", lambda: len(bound(env)) == BURST - len(doomed), timeout=120)
    wait_for("ledger settled", lambda: _settled(env), timeout=30)
    assert_consistent(env)


def test_leader_failover(env: Env, tmp_path_factory: pytest.TempPathFactory) -> None:
    cp: ControlPlane = env.cp
    standby = Extender(cp.kubeconfig, free_port(), tmp_path_factory.mktemp("standby-extender"))
    standby.start()
    cp.start_scheduler(scheduler_config(cp.kubeconfig, standby.port), name="standby-scheduler")
    try:
        creator = start_burst(env, burst("l"))
        cp.kill("kube-scheduler")  # the leading pair dies: SIGKILL, no lease release
        env.extender.kill()
        creator.join()
        at_kill = len(bound(env))
        start = time.monotonic()
        wait_for(f"all {BURST} pods bound by the standby", lambda: len(bound(env)) == BURST, timeout=120)
        print(f"\nleader failover: {at_kill} bound before, the rest {time.monotonic() - start:.1f}s after the kill")
        standby_env = Env(cp, standby)
        wait_for("standby ledger settled", lambda: _settled(standby_env), timeout=30)
        assert_consistent(standby_env)
    finally:
        cp.kill("standby-scheduler")
        standby.kill()
        env.extender.start()
        cp.restart("kube-scheduler")
        wait_for("the first pair leads again", lambda: _leads(env), timeout=60)


def _settled(env: Env) -> bool:
    return all(not n["reservations"] for n in env.extender.get("/debug/ledger")["nodes"])


def _leads(env: Env) -> bool:
    """A pod of ours gets bound: the restarted scheduler holds the lease and its extender binds."""
    name = f"probe-{time.monotonic_ns()}"
    create_pods(env, [gpu_pod_body(name, compute="100m", memory="1Gi")])
    try:
        wait_for("probe bound", lambda: name in bound(env), timeout=40)
        return True
    finally:
        delete_pods(env, [name])
