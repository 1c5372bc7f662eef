"""The bench's figure: bars of each arm's time over plain inference."""

from __future__ import annotations

from pathlib import Path

from xcam.bench.report import BenchReport, Row
from xcam.core.errors import XCamError


def _panel(ax, rows: list[Row], device: str, batch: int) -> None:
    """One device and batch size: a group of bars per method, one bar per library/backend."""
    sel = [r for r in rows if r.device == device and r.batch == batch]
    methods = list(dict.fromkeys(r.method for r in sel))
    series = list(dict.fromkeys(f"{r.library} ({r.backend})" for r in sel))
    width = 0.8 / max(len(series), 1)
    for i, s in enumerate(series):
        values = []
        for m in methods:
            hit = [r for r in sel if r.method == m and f"{r.library} ({r.backend})" == s]
            values.append(hit[0].ratio_to_inference if hit else 0.0)
        xs = [j + i * width for j in range(len(methods))]
        ax.bar(xs, values, width, label=s)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))], methods)
    ax.set_yscale("log")
    ax.set_ylabel("time / plain inference (same backend)")
    ax.set_title(f"{device}, batch {batch}")
    ax.legend(fontsize=7)


def plot(report: BenchReport, path: str | Path) -> Path:
    """Bars of the ratio to plain inference, per method and backend/library; one panel per
    device (and batch size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xcam.files import atomic

    rows = [r for r in report.rows if r.method != "inference"]
    panels = sorted({(r.device, r.batch) for r in rows})
    if not panels:
        raise XCamError("nothing to plot: no explanation was measured")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (device, batch) in zip(axes[0], panels, strict=True):
        _panel(ax, rows, device, batch)
    fig.tight_layout()
    path = Path(path)
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
