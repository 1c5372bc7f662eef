"""What a bench run hands back: one :class:`Row` per arm, the environment, and the report as
JSON, Markdown or a terminal table."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Row:
    model: str
    layer: str
    method: str  # "inference", "activations", or a method name
    library: str  # "xcam", a peer's name, or "torch" / "onnxruntime" for the floor
    backend: str
    device: str
    batch: int
    input_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    ratio_to_inference: float
    images_per_s: float
    # MB one call needs above what is held before it (xcam.bench.memory); None: not read
    peak_mb: float | None = None


@dataclass
class BenchReport:
    rows: list[Row]
    env: dict[str, Any]
    notes: list[str]
    goals: list[dict[str, Any]]

    def to_json(self) -> str:
        context = {
            "versions": self.env.get("versions"),
            "machine": {k: self.env.get(k) for k in ("machine", "cpu", "cpu_count", "gpu")},
            "threads": self.env.get("threads"),
        }
        payload = {
            "env": self.env,
            "rows": [{**asdict(r), **context} for r in self.rows],
            "goals": self.goals,
            "notes": self.notes,
        }
        return json.dumps(payload, indent=2) + "\n"


def _versions() -> dict[str, str | None]:
    """Installed versions of xcam, torch, ONNX Runtime and the peers (a peer: None if absent)."""
    versions: dict[str, str | None] = {}
    for dist in ("xcam-deploy", "torch", "torchvision", "onnxruntime-gpu", "onnxruntime"):
        with suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    for dist in ("grad-cam", "torchcam", "captum"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def environment(threads: int | None, devices: list[str]) -> dict[str, Any]:
    """The machine, threads, versions and date a run's figures belong to."""
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else None
    return {
        "machine": platform.machine(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


HEADER = [
    "model",
    "device",
    "backend",
    "batch",
    "method",
    "library",
    "median ms",
    "p10-p90 ms",
    "x inference",
    "img/s",
    "peak MB",
]


def _cells(r: Row) -> list[str]:
    return [
        r.model,
        r.device,
        r.backend,
        str(r.batch),
        r.method,
        r.library,
        f"{r.median_ms:.1f}",
        f"{r.p10_ms:.1f}-{r.p90_ms:.1f}",
        f"{r.ratio_to_inference:.2f}x",
        f"{r.images_per_s:.1f}",
        "–" if r.peak_mb is None else f"{r.peak_mb:.0f}",
    ]


def _markdown_intro(env: dict[str, Any], command: str) -> list[str]:
    """The title and the line of versions, the command and how to read the table."""
    v = env["versions"]
    return [
        f"# xcam bench ({env['cpu']}, {env['threads']} threads"
        + (f", {env['gpu']}" if env.get("gpu") else "")
        + ")",
        "",
        f"{env['date']}; torch {v.get('torch')}, onnxruntime "
        f"{v.get('onnxruntime-gpu') or v.get('onnxruntime')}, pytorch-grad-cam "
        f"{v.get('grad-cam')}, torchcam {v.get('torchcam')}, captum {v.get('captum')}. "
        f"Reproduce: `{command}`. Medians over interleaved rounds; `x inference` is the "
        "ratio to plain inference on the same backend and device; `peak MB` is the memory "
        "one call needs above what is held before it, measured after the timings (CUDA: "
        "peak allocated; CPU: peak resident set, Linux; – where ONNX Runtime's arena holds "
        "it, see xcam.bench.memory).",
    ]


def to_markdown(report: BenchReport, command: str = "xcam bench") -> str:
    lines = [
        *_markdown_intro(report.env, command),
        "",
        "| " + " | ".join(HEADER) + " |",
        "| " + " | ".join("---" for _ in HEADER) + " |",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in report.rows]
    if report.goals:
        lines += ["", "## Goals", ""]
        lines += [f"- **{g['status']}**: {g['goal']} — {g['detail']}" for g in report.goals]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def to_terminal(report: BenchReport) -> str:
    table = [HEADER] + [_cells(r) for r in report.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    for g in report.goals:
        lines.append(f"goal {g['status']}: {g['goal']} ({g['detail']})")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
