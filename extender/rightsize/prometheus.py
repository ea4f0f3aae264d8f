"""Prometheus' HTTP API, the one call right-sizing needs: a range query, reduced to one series."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable

from extender.core.errors import TemporaryError

Reduce = Callable[[list[float]], float]


class PrometheusError(TemporaryError):
    """Prometheus did not answer, or answered with an error (retried on the next pass)."""


class Prometheus:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def range(self, query: str, start: float, end: float, step: float,
              reduce: Reduce = sum) -> list[tuple[float, float]]:
        """(time, value) samples of `query` over [start, end]; several series are reduced per
        timestamp with `reduce` (sum for request rates, max for per-pod VRAM)."""
        params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                         "step": f"{step:g}"})
        url = f"{self.base}/api/v1/query_range?{params}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"prometheus {exc.code} for {query!r}: {_error_text(exc)}") from None
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"prometheus at {self.base} unreachable: {exc}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"prometheus error for {query!r}: {body.get('error', body)}")
        by_time: dict[float, list[float]] = defaultdict(list)
        for series in body.get("data", {}).get("result", []):
            for t, v in series.get("values", []):
                value = float(v)
                if math.isfinite(value):
                    by_time[float(t)].append(value)
        return [(t, reduce(vs)) for t, vs in sorted(by_time.items())]


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read()).get("error", "")
    except (OSError, ValueError):
        return exc.reason
