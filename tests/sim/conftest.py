from __future__ import annotations

from pathlib import Path

import pytest

from extender.sim.gpumodels import builtin_policy_path

POD_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
              "deletion_time,scheduled_time\n")
NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"


@pytest.fixture
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_HEADER + "n0,64000,262144,8,V100M16\nn1,64000,262144,4,T4\nn2,32000,131072,0,\n")
    pods = tmp_path / "pods.csv"
    pods.write_text(POD_HEADER +
                    "p0,4000,8192,1,500,,LS,Running,0,100,0\n"
                    "p1,4000,8192,1,250,T4,LS,Running,1,,1\n"
                    "p2,8000,16384,2,1000,,BE,Running,2,50,2\n"
                    "p3,2000,4096,0,0,,BE,Running,3,,3\n"
                    "p4,4000,8192,1,1000,V100M16|V100M32,LS,Running,4,,4\n")
    return pods, nodes


@pytest.fixture
def openb_policy() -> str:
    return str(builtin_policy_path("openb"))
