"""Benchmark results as measurements: (CUs, req/s) from vLLM's serving-benchmark JSON or a plain table.

vLLM's `benchmarks/benchmark_serving.py --save-result` (and `vllm bench serve`) writes one JSON object
per run whose `request_throughput` is completed requests / duration; it has no notion of CUs, so the
run names them through `--metadata computeUnits=N` (merged as a top-level string key). A plain file is
CSV with a `computeUnits,rps` header or JSON: a list of `{"computeUnits", "rps"}` objects, or an object
with such a list under `points`. Everything here works on text already read: the CLI reads the files.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from extender.core.errors import InputError

CU_KEYS = ("computeUnits", "compute_units", "cus")
VLLM_RPS = "request_throughput"


class ResultsError(InputError):
    """A results file that cannot be read as measurements."""


@dataclass(frozen=True)
class Measurement:
    computeUnits: int
    rps: float
    source: str
    meta: dict[str, object] = field(default_factory=dict, compare=False)


def parse_results(text: str, source: str) -> list[Measurement]:
    """The measurements in one results file's text (format told by its content, not its name)."""
    stripped = text.lstrip()
    if not stripped:
        raise ResultsError(source, "", "empty file")
    if stripped[0] in "[{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultsError(source, stripped[:40], f"not valid JSON: {exc.msg} (line {exc.lineno})") from None
        return _from_json(data, source)
    return _from_csv(text, source)


def _from_json(data: object, source: str) -> list[Measurement]:
    if isinstance(data, dict) and VLLM_RPS in data:
        return [_vllm_run(data, source)]
    rows = data.get("points") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ResultsError(source, type(data).__name__, f"expected vLLM's result JSON (with {VLLM_RPS}), "
                           "a list of {computeUnits, rps} or {points: [...]}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ResultsError(f"{source}[{i}]", row, "each point is an object {computeUnits, rps}")
        if VLLM_RPS in row:
            out.append(_vllm_run(row, f"{source}[{i}]"))
        else:
            out.append(_point(row, f"{source}[{i}]"))
    return out


def _from_csv(text: str, source: str) -> list[Measurement]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if "rps" not in header or not any(k in header for k in CU_KEYS):
        raise ResultsError(source, ",".join(header), "a CSV needs a header with computeUnits and rps")
    out = []
    for line, row in enumerate(reader, start=2):
        clean = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not any(clean.values()):
            continue
        out.append(_point(clean, f"{source}:{line}"))
    return out


def _point(row: dict, where: str) -> Measurement:
    cus = _cus(row, where)
    rps = _number(row.get("rps"), f"{where}.rps")
    meta = {k: v for k, v in row.items() if k not in CU_KEYS and k != "rps" and v not in ("", None)}
    return Measurement(cus, rps, where, meta)


def _vllm_run(run: dict, where: str) -> Measurement:
    cus = _cus(run, where, hint=" (run the benchmark with --metadata computeUnits=N)")
    rps = _number(run.get(VLLM_RPS), f"{where}.{VLLM_RPS}")
    completed = run.get("completed")
    if isinstance(completed, int) and completed <= 0:
        raise ResultsError(f"{where}.completed", completed, "no request completed: the run failed")
    keep = ("date", "backend", "model_id", "num_prompts", "completed", "duration", "request_rate",
            "max_concurrency", "burstiness")
    meta = {k: run[k] for k in keep if run.get(k) is not None}
    return Measurement(cus, rps, where, meta)


def _cus(row: dict, where: str, hint: str = "") -> int:
    key = next((k for k in CU_KEYS if k in row), None)
    if key is None:
        raise ResultsError(where, None, f"no computeUnits{hint}")
    value = row[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ResultsError(f"{where}.{key}", value, "not a number") from None
    if number != int(number) or number < 1:
        raise ResultsError(f"{where}.{key}", value, "must be a whole number of CUs, at least 1")
    return int(number)


def _number(value: object, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ResultsError(where, value, "not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ResultsError(where, value, "must be a finite number >= 0")
    return number
