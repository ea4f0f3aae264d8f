"""PNG plots (matplotlib, Agg backend): allocation against arrived load per run, and per-GPU
occupancy (stacked by class on small clusters, sorted curves on large ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CLASS_COLOURS = {"memory-bound": "tab:blue", "compute-bound": "tab:orange"}
MAX_BARS = 256


def allocation_plot(runs: list[dict[str, Any]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    top = 0.0
    for r in runs:
        xs, ys = r["series"]["arrivedPct"], r["series"]["allocatedPct"]
        ax.plot(xs, ys, label=r["label"], linewidth=1.5)
        top = max([top, *xs])
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="everything placed")
    ax.set_xlabel("arrived load (GPUs asked, % of cluster GPUs)")
    ax.set_ylabel("allocated (GPUs of placed pods, % of cluster GPUs)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def occupancy_plot(runs: list[dict[str, Any]], path: Path, title: str) -> Path:
    small = all(r["occupancyByClass"] and len(r["occupancyByClass"]) <= MAX_BARS for r in runs)
    if small:
        fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.2 * len(runs) + 0.6), squeeze=False)
        for ax, r in zip(axes[:, 0], runs, strict=True):
            rows = r["occupancyByClass"]
            bottom = [0.0] * len(rows)
            for cls, colour in CLASS_COLOURS.items():
                vals = [row.get(cls, 0.0) for row in rows]
                ax.bar(range(len(rows)), vals, bottom=bottom, color=colour, label=cls, width=0.9)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("CUs guaranteed")
            ax.set_title(f"{r['label']}: {r['gpus']} of {r['gpusTotal']} GPUs used", fontsize=9)
        axes[-1, 0].set_xlabel("GPU (cluster order)")
        axes[0, 0].legend(fontsize=8, loc="upper right")
    else:
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in runs:
            occ = sorted(r["occupancy"], reverse=True)
            n = len(occ) or 1
            ax.plot([100 * i / n for i in range(len(occ))], occ, label=r["label"])
        ax.set_xlabel("GPUs, fullest first (% of cluster)")
        ax.set_ylabel("share of CUs guaranteed")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(runs: list[dict[str, Any]], out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [allocation_plot(runs, out / f"{name}-allocation.png", f"{name}: allocation vs arrived load"),
            occupancy_plot(runs, out / f"{name}-occupancy.png", f"{name}: per-GPU occupancy")]
