"""gpuslice's bounds on every value it reads from pods, nodes, annotations, request bodies and policy
files. Anyone who can create a pod or reach the extender's port writes such values, so each is
checked against these limits *before* it is expanded or converted (a CU range before it becomes a
set, a quantity's exponent before it becomes a number): an out-of-bounds value costs microseconds
and is refused with a reason that names its key. The faces count refusals by key
(`gpuslice_refused_input_total`).

The limits are far above any real hardware or cluster and far below what would cost real time or memory.
"""

from __future__ import annotations

import re

MAX_CUS = 4096  # CUs per GPU (MI300X: 304); CU ids are below this, ranges are bounded by it before expansion
MAX_GPUS = 64  # GPUs per node, and per request
MAX_GPU_INDEX = 1023
MAX_BYTES = 2**53  # 8 PiB: any memory quantity (exact as a float, and far from int64 overflow in the columns)
MAX_MILLIS = 2**53  # any compute quantity in millis
MAX_QUANTITY_CHARS = 64  # a quantity's text ("192Gi", "1e9")
MAX_EXPONENT = 30  # |e| of a quantity written with an exponent ("1e300000" is refused, not computed)
MAX_ANNOTATION_BYTES = 256 * 1024  # one gpuslice annotation (Kubernetes caps all of a pod's at 256 KiB)
MAX_NAME_CHARS = 253  # a node or pod name (a DNS subdomain)
MAX_NODES = 50_000  # nodes in one extender request (kube-scheduler's largest tested clusters: 15,000)
MAX_POLICY_BYTES = 1024 * 1024  # a policy file

REFUSED = "beyond gpuslice's bound"  # every refusal's reason starts so; faces count them (is_refusal)


class OutOfBounds(ValueError):
    """A value beyond one of the bounds above."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{REFUSED}: {what}")


def is_refusal(reason: str) -> bool:
    """Whether an input error's reason is a bound's refusal (counted) rather than malformed input."""
    return reason.startswith(REFUSED)


_INDEX = re.compile(r"\[\d+\]")


def refusal_key(key: str) -> str:
    """The metric label for a refused key: list positions dropped, so the label set stays small."""
    return _INDEX.sub("[]", key)[:128]


def check_text(text: str, limit: int, what: str) -> str:
    if len(text) > limit:
        raise OutOfBounds(f"{what} is {len(text)} characters, more than {limit}")
    return text
