"""Reading a ResourceClaim's allocation: this node's shares of this driver, opaque parameters merged
class-first then claim, per request, and strict errors that name the field."""

from __future__ import annotations

import pytest

from extender.agent.dra.claims import ClaimError, SliceParams, claim_allocation
from extender.agent.dra.slices import DRIVER


def claim(results: list[dict], config: list[dict] | None = None) -> dict:
    return {"metadata": {"uid": "u1", "namespace": "ml", "name": "c"},
            "status": {"allocation": {"devices": {"results": results, "config": config or []}}}}


def result(request: str = "gpu", pool: str = "n1", driver: str = DRIVER, **consumed: str) -> dict:
    return {"request": request, "driver": driver, "pool": pool, "device": "gpu-1", "shareID": "s",
            "consumedCapacity": consumed}


def opaque(params: dict, requests: list[str] | None = None, driver: str = DRIVER, source: str = "FromClaim") -> dict:
    return {"source": source, **({"requests": requests} if requests else {}),
            "opaque": {"driver": driver, "parameters": params}}


def test_only_this_nodes_shares_of_this_driver() -> None:
    got = claim_allocation(claim([result(computeUnits="64", memory="60Gi"), result(pool="n2", computeUnits="8"),
                                  result(driver="gpu.amd.com", computeUnits="8")]), "n1")
    (share,) = got.shares
    assert (share.compute_units, share.memory_bytes, share.share_id) == (64, 60 * 2**30, "s")
    assert (got.uid, got.namespace, got.name) == ("u1", "ml", "c")


def test_parameters_merge_class_then_claim_and_per_request() -> None:
    cfg = [opaque({"class": "compute-bound", "computeLimit": "128"}, source="FromClass"),
           opaque({"class": "memory-bound"}),
           opaque({"computeLimit": "96"}, requests=["small"]),
           opaque({"computeLimit": "1"}, driver="other.example.com")]
    got = claim_allocation(claim([result("big", computeUnits="64"), result("small", computeUnits="64"),
                                  result("small/sub", computeUnits="8")], cfg), "n1")
    assert [s.params for s in got.shares] == [SliceParams("memory-bound", 128, None),
                                             SliceParams("memory-bound", 96, None),
                                             SliceParams("memory-bound", 96, None)]


@pytest.mark.parametrize(("mutate", "key"), [
    (lambda c: c["status"].clear(), "status.allocation"),
    (lambda c: c["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"].update(memory="lots"),
     "status.allocation.devices.results[0].consumedCapacity.memory"),
    (lambda c: c["status"]["allocation"]["devices"].update(config=[opaque({"computeLimt": "96"})]),
     "status.allocation.devices.config[0].opaque.parameters.computeLimt"),
    (lambda c: c["status"]["allocation"]["devices"].update(config=[opaque({"memoryLimit": "-1Gi"})]),
     "status.allocation.devices.config[0].opaque.parameters.memoryLimit"),
])
def test_errors_name_the_field(mutate, key: str) -> None:
    c = claim([result(computeUnits="64", memory="1Gi")])
    mutate(c)
    with pytest.raises(ClaimError) as err:
        claim_allocation(c, "n1")
    assert err.value.key == key
