"""gpu_families.render is the text generate_latest writes for gpu_families.families, byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from extender.core.inventory import GpuInfo
from extender.core.ledger import GpuState, NodeState, PodRef, Slice
from extender.engine.placement import COMPUTE_BOUND, MEMORY_BOUND
from extender.http import gpu_families

CUS = 38


class Yields(Collector):
    """A collector that yields what the callables give, at collect time."""

    def __init__(self, *sources) -> None:
        self.sources = sources

    def collect(self) -> list[Metric]:
        return [m for source in self.sources for m in source()]


def latest(*sources) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Yields(*sources))
    return generate_latest(registry).decode()


@st.composite
def gpus(draw: st.DrawFn, index: int) -> GpuState:
    info = GpuInfo(index, f"0x{index}", "MI300X", CUS, 2, 4, draw(st.sampled_from([0, 1, 999_999, 10**7, 2**36,
                                                                              192 * 2**30, 2**53 + 1, 2**62])),
                   draw(st.booleans()))
    bits = draw(st.lists(st.frozensets(st.integers(0, CUS - 1), max_size=6), max_size=4))
    taken: set[int] = set()
    slices = []
    for k, cus in enumerate(bits):
        cus = frozenset(cus - taken)
        taken |= cus
        slices.append(Slice(PodRef(f"u{k}", "ns", f"p{k}"), draw(st.sampled_from([MEMORY_BOUND, COMPUTE_BOUND])),
                            cus, frozenset(), draw(st.integers(0, 2**40)), draw(st.integers(0, 2**63))))
    shared = draw(st.frozensets(st.integers(0, CUS - 1), max_size=8))
    return GpuState(info, shared, tuple(slices))


# Names with what a label value must escape (backslash, quote, newline), braces and non-ASCII.
NAMES = st.text(st.sampled_from('ab-.\\"\n{}é✓'), min_size=1, max_size=12)


@st.composite
def nodes(draw: st.DrawFn) -> list[NodeState]:
    out = []
    for name in draw(st.lists(NAMES, max_size=4)):
        indexes = draw(st.lists(st.integers(0, 4096), max_size=3, unique=True))
        out.append(NodeState(name, tuple(draw(gpus(i)) for i in indexes)))
    return out


@settings(max_examples=300, deadline=None)
@given(nodes())
def test_render_is_generate_latest_of_the_families(states: list[NodeState]) -> None:
    assert gpu_families.render(states) == latest(lambda: gpu_families.families(states))


def test_escaped_name_and_go_floats() -> None:
    """The cases the property must cover, spelled out: an escaped node label and Go's exponent form."""
    info = GpuInfo(3, "0x3", "MI300X", CUS, 2, 4, 192 * 2**30, True)
    text = gpu_families.render([NodeState('a"b\\c\nd', (GpuState(info, frozenset()),))])
    big = floatToGoString(192 * 2**30)  # 2.06158430208e+11 (0.20 writes the exponent as e+011)
    assert f'gpuslice_gpu_memory_bytes{{gpu="3",node="a\\"b\\\\c\\nd",state="free"}} {big}\n' in text
    assert 'gpuslice_gpu_tenants{class="memory-bound",gpu="3",node="a\\"b\\\\c\\nd"} 0.0\n' in text
