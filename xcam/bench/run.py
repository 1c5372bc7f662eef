"""A bench run: per model and device, per backend (export, load, floor), per batch size,
every arm timed side by side and turned into rows."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from xcam.bench.arms import (
    Arm,
    Setup,
    Target,
    batch_arms,
    floor_library,
    method_arms,
    skipped_notes,
)
from xcam.bench.config import BenchConfig
from xcam.bench.floors import plain_floor
from xcam.bench.goals import goals
from xcam.bench.memory import cpu_release, peak_growth_mb
from xcam.bench.report import BenchReport, Row, environment
from xcam.bench.timing import measure, spread, torch_threads
from xcam.core.artifact import BACKEND_FORMAT, FORMATS


def _targets(cfg: BenchConfig) -> Iterator[Target]:
    """Each model of ``cfg`` (loaded once) on each of its devices."""
    from xcam.core.layers import default_layer
    from xcam.models import load_model

    for spec in cfg.models:
        info = load_model(spec)
        size = (cfg.input_size, cfg.input_size) if cfg.input_size else info.input_size
        layer = cfg.layer or info.default_layer
        shape, dtype = (info.channels, *size), info.input_dtype  # a grey or fp16 model
        if layer is None:
            layer = default_layer(info.model, torch.zeros(1, *shape, dtype=dtype))
        for device in cfg.devices:
            model = info.model.to(device).eval()
            example = torch.randn(2, *shape, device=device, dtype=dtype)
            yield Target(spec.split(":")[-1], model, layer, shape, dtype, device, example)


def _export(target: Target, backend: str, folder: Path, threads: int | None) -> Any:
    """The model exported for ``backend`` (with gradients for ``ingraph``), loaded back."""
    import exporters
    from xcam.backends import load

    # the format the backend reads; "ingraph" is an ONNX file with gradients
    fmt = BACKEND_FORMAT["onnxruntime" if backend == "ingraph" else backend].name
    path = folder / f"model{FORMATS[fmt].suffix}"
    exporters.export(
        target.model,
        [target.layer],
        target.example,
        path,
        format=fmt,
        gradients=backend == "ingraph",
        aoti=False,
    )
    options = {"threads": threads} if fmt == "onnx" else {}
    # bench's own export of the model: trusted
    return load(path, device=target.device, trust_code=True, **options)


def _set_up(
    cfg: BenchConfig, target: Target, backend: str, tmp: Path, echo: Callable[[str], None]
) -> Setup:
    """``backend`` ready to time on ``target``: floor, export (not on eager), xcam's methods."""
    folder = tmp / f"{target.short}_{target.device}_{backend}"
    folder.mkdir()
    echo(f"{target.short} {target.device} {backend}: exporting / loading")
    floor = plain_floor(backend, target.model, target.example, folder, cfg.threads)
    loaded = None if backend == "eager" else _export(target, backend, folder, cfg.threads)
    methods = method_arms(cfg, target.model, target.layer, backend, loaded)
    return Setup(backend, floor, loaded, methods)


def _rows(
    target: Target, backend: str, batch: int, arms: dict[str, Arm], times: dict[str, list[float]]
) -> list[Row]:
    """One row per arm: its spread, and its ratio to the floor's median."""
    base = spread(times["inference"])[0]
    rows = []
    for key, arm in arms.items():
        med, p10, p90 = spread(times[key])
        rows.append(
            Row(
                model=target.short,
                layer=target.layer,
                method=arm.method,
                library=arm.library,
                backend=backend,
                device=target.device,
                batch=batch,
                input_size=target.shape[1],
                median_ms=round(med, 3),
                p10_ms=round(p10, 3),
                p90_ms=round(p90, 3),
                ratio_to_inference=round(med / base, 3),
                images_per_s=round(batch * 1e3 / med, 2),
            )
        )
    return rows


def _time_batch(
    cfg: BenchConfig,
    target: Target,
    setup: Setup,
    batch: int,
    notes: list[str],
    echo: Callable[[str], None],
) -> tuple[dict[str, Arm], list[Row]]:
    """Every arm on one seeded batch, explained for its top-1 classes, timed side by side."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *target.shape, generator=gen).to(target.device, target.dtype)
    with torch.no_grad():
        classes = target.model(x).argmax(1)
    arms = batch_arms(cfg, target, setup, x, classes, notes)
    echo(
        f"{target.short} {target.device} {setup.backend} batch {batch}: "
        f"{len(arms)} arms x {cfg.repeats} rounds"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = measure({k: arm.call for k, arm in arms.items()}, cfg.repeats, target.sync)
    return arms, _rows(target, setup.backend, batch, arms, times)


Timed = tuple[str, str, dict[str, Arm], list[Row]]  # device, backend, arms, their rows


def _peak_memory(timed: list[Timed], echo: Callable[[str], None]) -> None:
    """Each arm's peak memory for one call, into its row (see :mod:`xcam.bench.memory`).
    Read after every timing: the allocator setting the CPU readings need would change them."""
    with cpu_release() as cpu_readable, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for device, backend, arms, rows in timed:
            if floor_library(backend) == "onnxruntime" or (device == "cpu" and not cpu_readable):
                continue  # an ONNX Runtime session's arena; a system without the readings
            echo(f"{rows[0].model} {device} {backend} batch {rows[0].batch}: peak memory")
            for arm, row in zip(arms.values(), rows, strict=True):
                row.peak_mb = round(peak_growth_mb(arm.call, device), 1)


def run_bench(cfg: BenchConfig, echo: Callable[[str], None] = print) -> BenchReport:
    """Time every arm of ``cfg``; ``echo`` gets one progress line per group of arms."""
    cfg.check()
    rows: list[Row] = []
    notes: list[str] = []
    timed: list[Timed] = []
    with torch_threads(cfg.threads), tempfile.TemporaryDirectory(prefix="xcam-bench-") as tmpdir:
        for target in _targets(cfg):
            for backend in cfg.backends:
                setup = _set_up(cfg, target, backend, Path(tmpdir), echo)
                notes += skipped_notes(cfg, target.short, setup)
                for batch in cfg.batches:
                    arms, batch_rows = _time_batch(cfg, target, setup, batch, notes, echo)
                    rows += batch_rows
                    timed.append((target.device, backend, arms, batch_rows))
        if cfg.memory:
            _peak_memory(timed, echo)
    report = BenchReport(rows, environment(cfg.threads, cfg.devices), notes, [])
    report.goals = goals(report)
    return report
