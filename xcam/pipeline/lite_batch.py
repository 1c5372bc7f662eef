"""The torch-free explainer of a dataset job: a file exported with gradients in its graph,
run by ONNX Runtime (:class:`xcam.lite.OnnxExplainer`). Imports numpy and onnxruntime only,
so a job (and every Ray worker) on such a file never loads torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xcam.core.artifact import IMAGENET_MEAN, IMAGENET_STD, TARGET_INPUT
from xcam.core.files import sha256_file
from xcam.pipeline.batch import Explained, class_name, top_predictions


class LiteBatch:
    """The :class:`~xcam.pipeline.batch.BatchExplainer` of an in-graph ONNX file.

    ``input_size``, ``mean`` and ``std`` default to the file's metadata (ImageNet's
    statistics where it records none; 224² for a file of any size); ``targets``: the class
    every image is explained for (None: the top-1), unless a label is given per image."""

    def __init__(
        self,
        path: str | Path,
        method: str = "gradcam",
        providers: Sequence | None = None,
        threads: int | None = None,
        *,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        targets: int | str | None = None,
        target_column: str | None = None,
    ):
        from xcam.lite import OnnxExplainer

        self.path = Path(path)
        self.explainer = OnnxExplainer(self.path, providers, method, threads, spin=False)
        meta = self.explainer.metadata
        shape = meta.input_shape
        h, w = shape[2:4] if len(shape) == 4 else (None, None)
        self.name = method
        self.input_size = tuple(input_size or (h or 224, w or 224))
        self.mean = tuple(mean or meta.mean or IMAGENET_MEAN)
        self.std = tuple(std or meta.std or IMAGENET_STD)
        self.classes = meta.classes
        self.num_classes = meta.num_classes
        self.activation = None if meta.pre_activation else meta.activation
        self.targets, self.target_column = targets, target_column
        self.fingerprint = sha256_file(self.path)
        self.layers = list(meta.layers)
        # a class other than the top-1 needs the file's target input (export --target-input)
        self.takes_targets = TARGET_INPUT in self.explainer.inputs

    def settings(self) -> dict[str, Any]:
        found = {
            "model": str(self.path),
            "model_sha256": self.fingerprint,
            "method": self.name,
            "layers": self.layers,
            "backend": f"onnxruntime:{self.path.name} (in-graph gradients)",
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "target": repr(self.targets),
        }
        if self.target_column:
            found["target_column"] = self.target_column
        return found

    def __call__(self, x: np.ndarray, labels: Sequence[int] | None) -> list[Explained]:
        targets = list(labels) if labels is not None else self.targets
        result = self.explainer(x, targets=targets)
        logits, chosen = result.logits, np.asarray(result.targets, dtype=np.int64)
        scores = self._scores(logits, chosen)
        out = []
        for i in range(x.shape[0]):
            t = int(chosen[i])
            fields = {
                "predictions": top_predictions(logits[i], self.classes, activation=self.activation),
                "target": t,
                "target_name": self._target_name(logits, t),
                "score": float(scores[i]),
                "degenerate": bool(result.maps[i].max() <= 0),
            }
            out.append(Explained(result.maps[i], fields))
        return out

    def _scores(self, logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """The score explained per sample: the class's output; for a single-output head the
        decision's (``z`` or ``-z``; a probability's ``p`` or ``1 - p``), as the library's
        :func:`xcam.core.targets.decision_score`."""
        if logits.shape[1] == 1:
            z = logits[:, 0]
            if self.activation == "sigmoid":
                return np.where(chosen == 1, z, 1 - z)
            return z * (2 * chosen - 1)
        return logits[np.arange(len(chosen)), chosen]

    def _target_name(self, logits: np.ndarray, target: int) -> str:
        if logits.shape[1] == 1:
            return "positive" if target == 1 else "negative"
        return class_name(self.classes, target)
