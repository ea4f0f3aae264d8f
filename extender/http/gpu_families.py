"""The per-GPU gauge families of /metrics (8 samples per GPU, nearly every line of a scrape).

`families` builds them as prometheus_client metric families: the rule (names, labels, values).
`render` writes the same text that `generate_latest` writes for them, without a Sample object and a
label sort per sample: at 5,000 nodes that per-sample Python cost was seconds of CPU per scrape,
holding the GIL while filter calls waited. The two are tied byte for byte by a property test
(tests/http/test_gpu_families.py); the header lines and the value formatting are the library's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from extender.core.ledger import GpuState, NodeState
from extender.engine.placement import COMPUTE_BOUND, MEMORY_BOUND


@dataclass(frozen=True)
class Family:
    """One gauge family: each GPU gets one sample per value of its last label."""

    name: str
    doc: str
    label: str  # the label that tells a GPU's samples apart (after node and gpu)
    values: tuple[str, ...]


FAMILIES = (
    Family("gpuslice_gpu_compute_units", "CUs per GPU by state: guaranteed to tenants, in the shared burst region, "
           "free to guarantee", "state", ("guaranteed", "burst", "free")),
    Family("gpuslice_gpu_memory_bytes", "GPU memory: guaranteed, sum of limits, free", "state",
           ("guaranteed", "limit", "free")),
    Family("gpuslice_gpu_tenants", "tenants per GPU by workload class", "class", (MEMORY_BOUND, COMPUTE_BOUND)),
)


def samples(g: GpuState) -> tuple[tuple[int, ...], ...]:
    """A GPU's sample values, per family of FAMILIES, in the order of the family's `values`."""
    return ((len(g.guaranteed), len(g.burst_cus), len(g.free_cus)),
            (g.memory_used, g.memory_limit_used, g.memory_free),
            (g.count(MEMORY_BOUND), g.count(COMPUTE_BOUND)))


def families(nodes: Iterable[NodeState]) -> list[GaugeMetricFamily]:
    """The families, sample by sample."""
    out = [GaugeMetricFamily(f.name, f.doc, labels=["node", "gpu", f.label]) for f in FAMILIES]
    for state in nodes:
        for g in state.gpus:
            labels = [state.name, str(g.info.index)]
            for family, spec, values in zip(out, FAMILIES, samples(g), strict=True):
                for label, value in zip(spec.values, values, strict=True):
                    family.add_metric([*labels, label], value)
    return out


def render(nodes: Iterable[NodeState]) -> str:
    """`generate_latest` of `families(nodes)`, as text."""
    parts = [[_header(k)] for k in range(len(FAMILIES))]
    lines = [_template(k) for k in range(len(FAMILIES))]
    for state in nodes:
        node = _label_value(state.name)
        for g in state.gpus:
            index = g.info.index
            for part, line, values in zip(parts, lines, samples(g), strict=True):
                part.append(line.format(node, index, *map(_value, values)))
    return "".join(chain.from_iterable(parts))


@lru_cache(maxsize=65536)
def _label_value(text: str) -> str:
    """A label value escaped as generate_latest escapes it: read off generate_latest's own line for a
    one-label sample (its escaping is not public API, and it changed between the versions we support).
    Node names repeat every scrape, so each is written this way once."""
    family = GaugeMetricFamily("x", "x", labels=["v"])
    family.add_metric([text], 0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(family))
    line = generate_latest(registry).decode().splitlines()[-1]  # x{v="..."} 0.0
    return line[len('x{v="'):line.rindex('"}')]


@lru_cache(maxsize=len(FAMILIES))
def _header(k: int) -> str:
    """The family's HELP and TYPE lines, as the library writes them for a family with no samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(GaugeMetricFamily(FAMILIES[k].name, FAMILIES[k].doc, labels=["node", "gpu"])))
    return generate_latest(registry).decode()


@lru_cache(maxsize=len(FAMILIES))
def _template(k: int) -> str:
    """One GPU's sample lines as a format string: {0} the escaped node name, {1} the GPU index, then the
    formatted values. Labels in name order, as generate_latest sorts them."""
    spec = FAMILIES[k]
    lines = []
    for i, value in enumerate(spec.values):
        labels = {"node": "{0}", "gpu": "{1}", spec.label: _label_value(value).replace("{", "{{").replace("}", "}}")}
        text = ",".join(f'{name}="{labels[name]}"' for name in sorted(labels))
        lines.append(f"{spec.name}{{{{{text}}}}} {{{i + 2}}}\n")
    return "".join(lines)


# Values repeat (CU counts, a few memory sizes): format each once. They are ints (samples), so the cache's
# key equality cannot confuse two values the library writes differently (as 0.0 and -0.0 would be).
_value = lru_cache(maxsize=4096)(floatToGoString)


class _Fixed(Collector):
    """A collector of one family, made beforehand."""

    def __init__(self, family: GaugeMetricFamily) -> None:
        self.family = family

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return [self.family]
