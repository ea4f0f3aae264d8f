"""The DRA kubelet plugin over real gRPC, driven by a test kubelet: registration, prepare with exact
XCC-complete disjoint CU sets and CDI devices, idempotent double prepare, unprepare, agent restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extender.agent.allocation import ENV_MEMORY_LIMIT, ENV_VISIBLE
from extender.agent.cdi import read_spec
from extender.agent.dra.claims import ClaimError
from extender.agent.dra.plugin import DraPlugin
from extender.agent.dra.prepare import CDI_KIND, Preparer, extender_tenants
from extender.agent.dra.slices import DRIVER, device_name
from extender.agent.pods import PodInfo
from extender.agent.topology import Topology, read_topology
from extender.core.assignment import ASSIGNMENT_ANNOTATION, Assignment, GpuAssignment
from extender.core.atoms import is_xcc_complete
from extender.core.cumask import ENV_CU_MASK, parse_cu_mask
from extender.core.policy import Policy
from extender.core.rangelist import parse_ranges
from tests.agent.dra_kubelet import ClaimRef, TestKubelet

NODE = "gpu-node-1"
GIB = 2**30


def allocated_claim(ref: ClaimRef, results: list[tuple[str, str, int | None, int | None]],
                    config: list[dict] | None = None, share_ids: bool = True) -> dict[str, Any]:
    """A ResourceClaim as kube-scheduler leaves it: results (request, device, CUs, memory bytes)."""
    out = []
    for i, (request, device, cus, memory) in enumerate(results):
        r: dict[str, Any] = {"request": request, "driver": DRIVER, "pool": NODE, "device": device}
        consumed = {k: str(v) for k, v in (("computeUnits", cus), ("memory", memory)) if v is not None}
        if consumed:
            r["consumedCapacity"] = consumed
        if share_ids:
            r["shareID"] = f"{ref.uid[:8]}-share-{i}"
        out.append(r)
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid, "resourceVersion": "1"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpuslice"}}]}},
            "status": {"allocation": {"devices": {"results": out, "config": config or []}}}}


class Claims:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.reads = 0

    def add(self, claim: dict) -> None:
        self.objects[(claim["metadata"]["namespace"], claim["metadata"]["name"])] = claim

    def get_claim(self, namespace: str, name: str) -> dict:
        self.reads += 1
        return self.objects[(namespace, name)]


class Env:
    def __init__(self, tmp: Path, root: Path) -> None:
        self.tmp = tmp
        self.root = root
        self.claims = Claims()
        self.topo: Topology = read_topology(root)
        self.plugin: DraPlugin | None = None
        self.preparer: Preparer | None = None
        self.kubelet = TestKubelet(tmp / "plugins_registry")
        self.pods: list[PodInfo] = []  # the extender's pods on this node

    @property
    def gpus(self) -> list[str]:
        return [device_name(g.info) for g in self.topo.gpus]

    def start(self, policy: Policy | None = None) -> None:
        pol = policy or Policy()
        self.preparer = Preparer(NODE, lambda: self.topo, self.claims, lambda: pol, self.tmp / "state",
                                 self.tmp / "cdi", held=lambda: extender_tenants(self.pods, NODE))
        self.preparer.restore()
        self.plugin = DraPlugin(self.preparer, self.tmp / "plugins_registry", self.tmp / "plugins" / DRIVER)
        self.plugin.serve()
        self.kubelet.register()

    def stop(self) -> None:
        if self.plugin is not None:
            self.plugin.stop()

    def claim(self, name: str, results: list[tuple[str, str, int | None, int | None]], **kw: Any) -> ClaimRef:
        ref = ClaimRef("default", f"{name}-0000-4000-8000-{len(self.claims.objects):012d}", name)
        self.claims.add(allocated_claim(ref, results, **kw))
        return ref

    def edits(self, cdi_id: str) -> tuple[dict[str, str], list[str]]:
        kind, _, device = cdi_id.partition("=")
        assert kind == str(CDI_KIND)
        _, name, edits = read_spec(self.tmp / "cdi" / CDI_KIND.file_name(device))
        assert name == device
        return dict(edits.env), [d.path for d in edits.device_nodes]

    def env_of(self, resp, uid: str) -> dict[str, str]:
        """The environment of a one-device claim's CDI device."""
        (device,) = resp.claims[uid].devices
        (cdi,) = device.cdi_device_ids
        return self.edits(cdi)[0]

    def masks(self, resp, uid: str) -> dict[int, frozenset[int]]:
        envs = self.env_of(resp, uid)
        return parse_cu_mask(envs[ENV_CU_MASK]) if ENV_CU_MASK in envs else {}


@pytest.fixture
def env(tmp_path: Path, host) -> Env:
    e = Env(tmp_path, host("mi300x-spx"))
    e.start()
    yield e
    e.stop()


def test_registration_answers_like_a_kubelet_dra_plugin(env: Env) -> None:
    info = env.kubelet.register()
    assert (info.type, info.name) == ("DRAPlugin", DRIVER)
    assert list(info.supported_versions) == ["v1.DRAPlugin"]
    assert env.kubelet.service == "v1.DRAPlugin"
    assert Path(info.endpoint) == env.tmp / "plugins" / DRIVER / "dra.sock"
    assert env.plugin.registration.registered.is_set()


def test_three_64_cu_shares_of_one_gpu_get_disjoint_xcc_complete_masks(env: Env) -> None:
    gpu = env.gpus[0]
    refs = [env.claim(f"c{i}", [("gpu", gpu, 64, 60 * GIB)]) for i in range(3)]
    resp = env.kubelet.prepare(*refs)
    sets = []
    for ref in refs:
        entry = resp.claims[ref.uid]
        assert entry.error == ""
        (device,) = entry.devices
        assert (device.pool_name, device.device_name, list(device.request_names)) == (NODE, gpu, ["gpu"])
        assert device.share_id == f"{ref.uid[:8]}-share-0"
        envs, nodes = env.edits(device.cdi_device_ids[0])
        assert nodes == ["/dev/kfd", f"/dev/dri/renderD{env.topo.gpus[0].render_minor}"]
        assert envs[ENV_VISIBLE] == env.topo.gpus[0].uuid
        assert envs[ENV_MEMORY_LIMIT] == str(60 * GIB)
        (cus,) = parse_cu_mask(envs[ENV_CU_MASK]).values()
        assert len(cus) == 64 and is_xcc_complete(cus, 8)
        sets.append(cus)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    burst = frozenset(range(272, 304))
    assert not any(s & burst for s in sets)


def test_double_prepare_is_idempotent_and_does_not_reread(env: Env) -> None:
    ref = env.claim("a", [("gpu", env.gpus[0], 64, 16 * GIB)])
    first = env.kubelet.prepare(ref)
    reads = env.claims.reads
    second = env.kubelet.prepare(ref)
    assert first == second
    assert env.claims.reads == reads
    assert len(env.preparer.ledger.node(NODE).gpu(0).slices) == 1


def test_unprepare_frees_the_share_for_the_next_claim(env: Env) -> None:
    gpu = env.gpus[0]
    refs = [env.claim(f"f{i}", [("gpu", gpu, 64, 40 * GIB)]) for i in range(4)]  # 256 of 272 CUs
    env.kubelet.prepare(*refs)
    late = env.claim("late", [("gpu", gpu, 64, 40 * GIB)])
    refused = env.kubelet.prepare(late).claims[late.uid]
    assert "needs 64 CUs, 16 free" in refused.error and not refused.devices
    freed = env.masks(env.kubelet.prepare(refs[1]), refs[1].uid)
    assert env.kubelet.unprepare(refs[1]).claims[refs[1].uid].error == ""
    assert not (env.tmp / "cdi" / CDI_KIND.file_name(f"{refs[1].uid}-gpu")).exists()
    assert env.kubelet.unprepare(refs[1]).claims[refs[1].uid].error == ""  # again: still fine
    got = env.kubelet.prepare(late)
    assert got.claims[late.uid].error == ""
    assert env.masks(got, late.uid) == freed


def test_restarted_agent_prepares_the_same_sets_and_keeps_them_out_of_new_claims(env: Env) -> None:
    gpu = env.gpus[0]
    a, b = env.claim("a", [("gpu", gpu, 128, 60 * GIB)]), env.claim("b", [("gpu", gpu, 64, 60 * GIB)])
    before = env.kubelet.prepare(a, b)
    env.stop()
    for f in (env.tmp / "cdi").iterdir():  # /var/run is a tmpfs: a reboot empties it
        f.unlink()
    env.claims.objects.clear()  # the checkpoint alone must answer for prepared claims
    env.start()
    after = env.kubelet.prepare(a, b)
    assert env.masks(after, a.uid) == env.masks(before, a.uid)
    assert env.masks(after, b.uid) == env.masks(before, b.uid)
    c = env.claim("c", [("gpu", gpu, 64, 60 * GIB)])
    fresh = env.masks(env.kubelet.prepare(c), c.uid)[0]
    assert not fresh & (env.masks(before, a.uid)[0] | env.masks(before, b.uid)[0])
    assert json.loads((env.tmp / "state" / "checkpoint.json").read_text())["claims"].keys() == {a.uid, b.uid, c.uid}


def test_whole_gpu_share_gets_every_cu_and_no_mask(env: Env) -> None:
    whole = env.claim("whole", [("gpu", env.gpus[1], 272, None)])
    resp = env.kubelet.prepare(whole)
    envs = env.env_of(resp, whole.uid)
    assert ENV_CU_MASK not in envs
    assert envs[ENV_MEMORY_LIMIT] == str(env.topo.gpus[1].info.memoryBytes)
    assert env.preparer.ledger.node(NODE).gpu(1).slices[0].cus == frozenset(range(304))
    other = env.claim("other", [("gpu", env.gpus[1], 8, GIB)])
    assert "needs 8 CUs, 0 free" in env.kubelet.prepare(other).claims[other.uid].error


def test_compute_limit_bursts_into_the_shared_region(env: Env) -> None:
    cfg = [{"source": "FromClaim", "requests": ["gpu"],
            "opaque": {"driver": DRIVER, "parameters": {"class": "compute-bound", "computeLimit": "96",
                                                        "memoryLimit": "20Gi"}}}]
    ref = env.claim("burst", [("gpu", env.gpus[0], 64, 10 * GIB)], config=cfg)
    resp = env.kubelet.prepare(ref)
    (cus,) = env.masks(resp, ref.uid).values()
    assert len(cus) == 96 and is_xcc_complete(cus, 8)
    assert len(cus & frozenset(range(272, 304))) == 32
    assert env.env_of(resp, ref.uid)[ENV_MEMORY_LIMIT] == str(20 * GIB)
    entry = env.preparer.prepared()[0]
    assert entry.assignment.workload_class == "compute-bound"
    assert len(entry.assignment.gpus[0].cus) == 64


def test_two_gpus_in_one_claim_share_one_cdi_device(env: Env) -> None:
    ref = env.claim("pair", [("gpu", env.gpus[0], 64, 8 * GIB), ("gpu", env.gpus[1], 64, 8 * GIB)])
    resp = env.kubelet.prepare(ref)
    devices = resp.claims[ref.uid].devices
    assert [d.device_name for d in devices] == env.gpus[:2]
    assert devices[0].cdi_device_ids == devices[1].cdi_device_ids
    envs, nodes = env.edits(devices[0].cdi_device_ids[0])
    assert envs[ENV_VISIBLE] == ",".join(g.uuid for g in env.topo.gpus[:2])
    assert set(parse_cu_mask(envs[ENV_CU_MASK])) == {0, 1}
    assert len(nodes) == 3


@pytest.mark.parametrize(("mutate", "words"), [
    (lambda c: c["metadata"].update(uid="someone-else"), "not the one kubelet asks for"),
    (lambda c: c["status"].pop("allocation"), "not allocated"),
    (lambda c: c["status"]["allocation"]["devices"]["results"][0].update(device="gpu-nope"), "no such GPU"),
    (lambda c: c["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"].update(computeUnits="12"),
     "8-CU atoms"),
    (lambda c: c["status"]["allocation"]["devices"].update(config=[{"opaque": {"driver": DRIVER, "parameters": {
        "class": "bandwidth-hog"}}}]), "must be one of"),
])
def test_a_claim_that_cannot_be_prepared_gets_its_reason(env: Env, mutate, words: str) -> None:
    ref = env.claim("bad", [("gpu", env.gpus[0], 64, GIB)])
    mutate(env.claims.objects[("default", "bad")])
    good = env.claim("good", [("gpu", env.gpus[0], 64, GIB)])
    resp = env.kubelet.prepare(ref, good)
    assert words in resp.claims[ref.uid].error
    assert resp.claims[good.uid].error == "" and resp.claims[good.uid].devices


def test_masks_parse_as_range_lists(env: Env) -> None:
    ref = env.claim("r", [("gpu", env.gpus[0], 64, GIB)])
    env.kubelet.prepare(ref)
    data = json.loads((env.tmp / "state" / "checkpoint.json").read_text())["claims"][ref.uid]
    assert len(parse_ranges(data["assignment"]["gpus"][0]["cus"])) == 64


def test_a_failed_prepare_leaves_nothing_behind(env: Env, monkeypatch) -> None:
    ref = env.claim("x", [("gpu", env.gpus[0], 64, GIB)])

    def full_disk(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("extender.agent.dra.prepare.write_spec", full_disk)
    assert "No space left" in env.kubelet.prepare(ref).claims[ref.uid].error
    assert env.preparer.ledger.node(NODE).gpu(0).slices == ()
    assert env.preparer.prepared() == []


def test_prepare_chooses_around_the_extenders_pods_on_the_gpu(env: Env) -> None:
    g = env.topo.gpus[0].info
    held = Assignment(NODE, (GpuAssignment(0, g.id, frozenset(range(64)), frozenset(), 100 * GIB, 100 * GIB),),
                      "compute-bound", "p")
    env.pods.append(PodInfo("pod-1", "ml", "extender-pod", NODE, "Running",
                            annotations={ASSIGNMENT_ANNOTATION: held.to_json()}))
    env.pods.append(PodInfo("pod-2", "ml", "elsewhere", "other-node", "Running",
                            annotations={ASSIGNMENT_ANNOTATION: held.to_json()}))
    a = env.claim("a", [("gpu", env.gpus[0], 64, 60 * GIB)])
    (cus,) = env.masks(env.kubelet.prepare(a), a.uid).values()
    assert not cus & frozenset(range(64))
    b = env.claim("b", [("gpu", env.gpus[0], 64, 60 * GIB)])  # CUs would fit; memory (100+60+60Gi) does not
    assert "memory" in env.kubelet.prepare(b).claims[b.uid].error
    env.pods[0] = PodInfo("pod-1", "ml", "extender-pod", NODE, "Succeeded",
                          annotations={ASSIGNMENT_ANNOTATION: held.to_json()})
    assert env.kubelet.prepare(b).claims[b.uid].error == ""  # the extender's pod ended: room again


def test_an_unreadable_claim_fails_alone(env: Env) -> None:
    good = env.claim("good", [("gpu", env.gpus[0], 64, GIB)])
    missing = ClaimRef("default", "gone-0000", "gone")  # the claim source raises KeyError
    resp = env.kubelet.prepare(missing, good)
    assert "KeyError" in resp.claims[missing.uid].error
    assert resp.claims[good.uid].error == ""


def test_a_failed_status_write_is_retried(env: Env) -> None:
    class FlakyStatus:
        def __init__(self) -> None:
            self.fail = True
            self.published: list[str] = []

        def publish_prepared(self, claim) -> None:
            if self.fail:
                raise OSError("API server unreachable")
            self.published.append(claim.uid)

    status = FlakyStatus()
    env.preparer.status = status
    ref = env.claim("s", [("gpu", env.gpus[0], 64, GIB)])
    assert env.kubelet.prepare(ref).claims[ref.uid].error == ""  # the container may start regardless
    assert env.preparer.publish_pending() == 1
    status.fail = False
    assert env.preparer.publish_pending() == 0 and status.published == [ref.uid]


@pytest.mark.parametrize("text", ["{not json", '{"version": 99, "claims": {}}',
                                  '{"version": 1, "claims": {"u": {"namespace": "ns"}}}'])
def test_an_unreadable_checkpoint_stops_the_restore(env: Env, text: str) -> None:
    env.stop()
    (env.tmp / "state").mkdir(exist_ok=True)
    (env.tmp / "state" / "checkpoint.json").write_text(text)
    with pytest.raises(ClaimError):
        env.start()
    assert not env.preparer.restored
