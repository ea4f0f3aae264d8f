"""Raw API responses (`_preload_content=False`): the JSON body, and the connection handed back.

urllib3 returns a connection to the client's pool only once the response is read and released;
a response left unreleased costs a fresh TLS connection on the next call (and a handshake's CPU
on the API server), which halves bind throughput.
"""

from __future__ import annotations

import json
from typing import Any


def read_json(resp: Any) -> dict[str, Any]:
    try:
        return json.loads(resp.data)
    finally:
        release(resp)


def release(resp: Any) -> None:
    resp.data  # noqa: B018 - reads the body to its end so the connection can be reused
    release_conn = getattr(resp, "release_conn", None)
    if release_conn is not None:
        release_conn()
