"""Raw API responses (`_preload_content=False`): the JSON body, and the connection handed back.

urllib3 returns a connection to the client's pool only once the response is read and released;
a response left unreleased costs a fresh TLS connection on the next call (and a handshake's CPU
on the API server), which halves bind throughput.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

PAGE = 500


def read_json(resp: Any) -> dict[str, Any]:
    try:
        return orjson.loads(resp.data)  # a list page of 500 pods, parsed in C (short keys shared)
    finally:
        release(resp)


def release(resp: Any) -> None:
    resp.data  # noqa: B018 - reads the body to its end so the connection can be reused
    release_conn = getattr(resp, "release_conn", None)
    if release_conn is not None:
        release_conn()


def list_items(fn: Callable[..., Any], **selector: str) -> tuple[list[dict[str, Any]], str]:
    """Every item of a list call, page by page, and the list's resourceVersion."""
    items: list[dict[str, Any]] = []
    cont: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE, "_preload_content": False, "_request_timeout": (5, 60), **selector}
        if cont:
            kwargs["_continue"] = cont
        data = read_json(fn(**kwargs))
        items.extend(data.get("items") or [])
        meta = data.get("metadata") or {}
        cont = meta.get("continue")
        if not cont:
            return items, meta.get("resourceVersion", "")
