"""rightsize.workloads.surges: whether a Deployment's rolling update, at its replica count, starts a new pod
before it stops an old one — resolved as the Deployment controller's ResolveFenceposts resolves it."""

from __future__ import annotations

import pytest

from extender.rightsize.workloads import surges

CASES = [  # (why, strategy, replicas, surges)
    ("the default (25%/25%) at one replica", None, 1, True),
    ("the default at three replicas: 25% of 3 rounds down to 0 unavailable", {}, 3, True),
    ("the default at four replicas: one may be unavailable", {"type": "RollingUpdate"}, 4, False),
    ("maxUnavailable 0", {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}, 8, True),
    ("maxSurge 0 (the controller then allows one unavailable)", {"rollingUpdate": {"maxSurge": 0,
                                                                                  "maxUnavailable": 0}}, 1, False),
    ("maxSurge 0%", {"rollingUpdate": {"maxSurge": "0%", "maxUnavailable": 1}}, 1, False),
    ("Recreate stops every pod first", {"type": "Recreate"}, 1, False),
]


@pytest.mark.parametrize(("why", "strategy", "replicas", "expected"), CASES, ids=[c[0] for c in CASES])
def test_surges(why: str, strategy: dict | None, replicas: int, expected: bool) -> None:
    assert surges(strategy, replicas) is expected
