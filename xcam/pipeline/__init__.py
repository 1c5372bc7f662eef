"""Explaining image files and whole datasets, end to end::

    sources ─► decode (threads) ─► explainer on batches ─► write (threads) ─► record
    folders,    load, preprocess    torch method, or an      maps .npy,        predictions.json,
    globs,      (bounded: a few     in-graph ONNX file       overlays .png     records.parquet
    manifests   batches ahead)      without torch

- :mod:`~xcam.pipeline.sources`: what to explain (folders, globs, CSV / Parquet manifests);
- :mod:`~xcam.pipeline.batch`: one batch's explanations and the files of each image
  (torch-free, run by every engine);
- :mod:`~xcam.pipeline.lite_batch` / :mod:`~xcam.pipeline.torch_batch`: the explainers;
- :mod:`~xcam.pipeline.job`: the output folder (run, resume, safety) and the local engine;
- :mod:`~xcam.pipeline.ray_engine`: the same batches as a Ray Data pipeline;
- :mod:`~xcam.pipeline.table`: ``records.parquet``;
- :mod:`~xcam.pipeline.dataset`: :func:`explain_dataset` and :func:`explain_files`.

``import xcam.pipeline`` loads none of them: a job on an in-graph file never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "explain_dataset": "xcam.pipeline.dataset",
    "explain_files": "xcam.pipeline.dataset",
    "JobReport": "xcam.pipeline.job",
    "JobOptions": "xcam.pipeline.job",
    "run_job": "xcam.pipeline.job",
    "top_predictions": "xcam.pipeline.batch",
    "run_settings": "xcam.pipeline.torch_batch",
    "Item": "xcam.pipeline.sources",
    "find_items": "xcam.pipeline.sources",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xcam.pipeline' has no attribute {name!r}")
