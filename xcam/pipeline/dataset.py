"""The library's entry points for jobs: :func:`explain_dataset` (a model or file, a source,
an engine) and :func:`explain_files` (a loaded model and method, as ``xcam explain`` and
``xcam demo`` run them)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from xcam.pipeline.job import JobOptions, JobReport, Progress, run_job
from xcam.pipeline.plan import Plan
from xcam.pipeline.sources import Item, iter_items

ENGINES = ("local", "ray")


def default_threads(concurrency: int) -> int:
    """ONNX Runtime threads per Ray worker, so that the workers share this machine's cores."""
    import os

    return max(1, (os.cpu_count() or 1) // max(concurrency, 1))


def explain_dataset(
    model_or_file: Any,
    source: str | Path | Iterable[str | Path | Item],
    out: str | Path,
    method: str = "gradcam",
    *,
    engine: str = "local",
    layers: str | Sequence[str] | None = None,
    target: int | str | None = None,
    target_column: str | None = None,
    path_column: str = "path",
    weights: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    overlays: bool = True,
    alpha: float = 0.5,
    colormap: str = "jet",
    workers: int = 2,
    report: bool = False,
    concurrency: int = 2,
    ray_address: str | None = None,
    trust_code: bool = False,
    overwrite: bool = False,
    wait: bool = False,
    on_progress: Progress | None = None,
    echo: Callable[[str], None] | None = None,
) -> JobReport:
    """Explain every image of ``source`` with ``model_or_file`` into the folder ``out``.

    ``model_or_file``: an ``nn.Module``, a model spec (``"demo"``, ``"torchvision:NAME"``,
    …) or an exported file; a file exported with gradients in its graph (``xcam export
    --gradients``) runs without torch for the methods :data:`xcam.lite.METHODS`.
    ``source``: a folder (recursive), a glob, a CSV / Parquet manifest, an image, or a list
    of them. ``target_column``: the manifest's label column, explained instead of the
    prediction (rows then say whether the prediction was right).

    Writes ``<stem>_<method>.npy`` (each map at its image's size), ``.png`` overlays unless
    ``overlays=False``, ``predictions.json``, ``records.parquet`` and with ``report=True``
    ``report.html`` (a gallery that reads offline); resumes an
    interrupted run of the same settings. ``engine="ray"`` runs the batches as a Ray Data
    pipeline (``concurrency`` workers, each holding one model; a local cluster unless
    ``ray_address``). Bad images are rows with their error; the report lists them.

    Example::

        report = xcam.explain_dataset("r50_grad.onnx", "val/", "out/", overlays=False)
        print(len(report.items), "explained,", len(report.errors), "failed")
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    specs = [source] if isinstance(source, str | Path) else list(source)
    loose = [s for s in specs if not isinstance(s, Item)]
    given = (s for s in specs if isinstance(s, Item))
    found = iter_items(loose, path_column, target_column, echo)
    plan = Plan.of(itertools.chain(given, found), echo or (lambda _line: None))
    factory = functools.partial(
        make_explainer,
        model_or_file,
        method,
        layers=layers,
        target=target,
        target_column=target_column,
        weights=weights,
        device=device,
        trust_code=trust_code,
        threads=default_threads(concurrency) if engine == "ray" else None,
    )
    explainer = factory()
    options = JobOptions(batch_size, overlays, alpha, colormap, workers, report=report)
    runner = None
    if engine == "ray":
        from xcam.pipeline.ray_engine import ray_engine

        gpus = 1.0 if device == "cuda" else 0.0
        runner = ray_engine(factory, concurrency=concurrency, address=ray_address, num_gpus=gpus)
    return run_job(
        explainer,
        plan,
        out,
        options,
        engine=runner,
        on_progress=on_progress,
        overwrite=overwrite,
        wait=wait,
        echo=echo,
    )


def lite_method(method: str) -> str | None:
    """``method``'s name among :data:`xcam.lite.METHODS`, matched as the registry matches
    names; None for a method an in-graph file can't serve."""
    from xcam.core.names import method_key
    from xcam.lite import METHODS

    return {method_key(m): m for m in METHODS}.get(method_key(method))


def lite_explainer(
    path: Any,
    method: str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    target: int | str | None = None,
    target_column: str | None = None,
):
    """A :class:`~xcam.pipeline.lite_batch.LiteBatch` for this job where the file can serve
    it without torch: an in-graph ONNX file, one of its methods, a class target (or labels)
    it takes as an input, ONNX Runtime's CUDA provider for ``device="cuda"``. None where it
    can't: the main library runs such a job."""
    from xcam.core.decision import BINARY
    from xcam.core.runtime import CUDA, device_providers

    if device.startswith("cuda"):
        import onnxruntime as ort

        if CUDA not in ort.get_available_providers():
            return None  # the main library says what is missing
    named = isinstance(target, str) and target.lower() in BINARY
    if target is not None and not (isinstance(target, int) or named):
        return None
    name = lite_method(method)
    if name is None or not isinstance(path, str | Path):
        return None
    if Path(path).suffix.lower() != ".onnx" or not Path(path).is_file():
        return None
    from xcam.pipeline.lite_batch import LiteBatch

    try:  # one session: a file without gradients in its graph refuses to load here
        explainer = LiteBatch(
            path,
            name,
            device_providers(device),
            threads,
            targets=target,
            target_column=target_column,
        )
    except Exception:  # no gradients, or not a file xcam reads: the main library says why
        return None
    wants_target = target is not None or target_column is not None
    if wants_target and not explainer.takes_targets:
        return None  # the main library explains other classes with its eager tail
    return explainer


def make_explainer(
    model_or_file: Any,
    method: str = "gradcam",
    *,
    layers: str | Sequence[str] | None = None,
    target: int | str | None = None,
    target_column: str | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    trust_code: bool = False,
    threads: int | None = None,
    trust_weights: bool = False,
):
    """The explainer of a job: :class:`~xcam.pipeline.lite_batch.LiteBatch` for an in-graph
    ONNX file (no torch), else :class:`~xcam.pipeline.torch_batch.MethodBatch` on the model
    loaded by :func:`xcam.models.load_model`. Workers of the Ray engine call this too."""
    if weights is None and layers is None:
        lite = lite_explainer(
            model_or_file,
            method,
            device=device,
            threads=threads,
            target=target,
            target_column=target_column,
        )
        if lite is not None:
            return lite
    from xcam.methods import get_method
    from xcam.models import load_model
    from xcam.pipeline.torch_batch import MethodBatch

    info = load_model(
        model_or_file,
        weights=weights,
        device=device,
        trust_code=trust_code,
        trust_weights=trust_weights,
    )
    cls = get_method(method)
    options: dict[str, Any] = {}
    if cls.uses_layers:
        options["layers"] = ([layers] if isinstance(layers, str) else layers) or info.default_layer
    return MethodBatch(info, cls(info.model, **options), target, device, target_column)


def explain_files(
    info,
    paths: Sequence[Path],
    method,
    out: Path,
    targets=None,
    batch_size: int = 8,
    alpha: float = 0.5,
    colormap: str = "jet",
    device: str = "cpu",
    on_progress: Progress | None = None,
    overwrite: bool = False,
    wait: bool = False,
    echo: Callable[[str], None] | None = None,
    overlays: bool = True,
    workers: int = 2,
) -> JobReport:
    """Explain each image of ``paths`` (paths or :class:`~xcam.pipeline.sources.Item`) with
    ``method`` (a :class:`~xcam.methods.base.BaseCAM` on ``info``'s model) into ``out``:
    ``<stem>_<method>.png`` / ``.npy`` and the records (see :mod:`xcam.pipeline.job` for
    the folder's safety and resumption).

    The ``.npy`` map is float32 in ``[0, 1]`` at the image's own size, aligned with the
    overlay. A method whose maps are input-shaped attributions ``[B, C, H, W]`` (Guided
    Backprop, Guided Grad-CAM) writes instead the attribution's picture
    (:func:`xcam.viz.attribution_image`) and the raw float32 ``[C, H_img, W_img]``
    attribution, resized bilinearly; each item's ``kind`` is ``"attribution"`` or
    ``"heatmap"``."""
    from xcam.pipeline.torch_batch import MethodBatch

    explainer = MethodBatch(info, method, targets, device)
    options = JobOptions(batch_size, overlays, alpha, colormap, workers)
    return run_job(
        explainer,
        paths,
        out,
        options,
        on_progress=on_progress,
        overwrite=overwrite,
        wait=wait,
        echo=echo,
    )
