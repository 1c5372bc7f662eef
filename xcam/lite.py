"""Torch-free explanations for production: numpy + ONNX Runtime only.

``import xcam.lite`` imports neither torch nor torchvision. It runs a file exported with
gradients (``xcam export MODEL --gradients``, see :mod:`exporters.gradients`) and turns its
activations and gradients into maps with the gradient methods' weighting rules:

- ``gradcam``   Selvaraju et al. 2017: ``w_c = mean_ij G_c``  (the file's own ``gradcam``)
- ``gradcam++`` Chattopadhay et al. 2018: ``w_c = sum_ij a_cij ReLU(G_cij)``,
  ``a = G² / (2G² + sum_ij(A)·G³)``
- ``xgradcam``  Fu et al. 2020: ``w_c = sum_ij(G·A) / sum_ij(A)``
- ``hirescam``  Draelos & Carin 2020: ``L = sum_c G ⊙ A`` (no spatial averaging)
- ``layercam``  Jiang et al. 2021: ``L = sum_c ReLU(G) ⊙ A``
- ``eigengradcam`` Muhammad & Yeasin 2020 (on ``G ⊙ A``): ``L = (G ⊙ A) v_1``, the first
  principal direction of the positions x channels matrix

then ``ReLU``, bilinear upsampling to the input (as ``torch.nn.functional.interpolate``
with ``align_corners=False``), min-max normalisation and the mean over layers.

Example::

    explainer = OnnxExplainer("resnet50_grad.onnx", providers=["CPUExecutionProvider"])
    result = explainer(batch_nchw_float32)            # top-1 class
    result.maps, result.logits, result.targets
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xcam.core.artifact import (
    GRADCAM,
    LOGITS,
    TARGET_INPUT,
    check_file_metadata,
    grad_name,
    static_mismatch,
)
from xcam.core.decision import class_targets, decision_threshold
from xcam.core.errors import InputError, NumericalError, XCamError
from xcam.core.flat import RELATIVE_SPREAD
from xcam.core.grid import grid_shape
from xcam.core.resize import bilinear
from xcam.core.runtime import CPU, open_session, session_metadata, session_signature

_EPS = 1e-7


def _channel(w: np.ndarray) -> np.ndarray:
    return w[:, :, None, None]


def _gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return (_channel(g.mean(axis=(2, 3))) * a).sum(axis=1)


def _gradcam_pp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    g2, g3 = g**2, g**3
    denom = 2 * g2 + _channel(a.sum(axis=(2, 3))) * g3
    alpha = np.where(g != 0, g2 / np.where(denom != 0, denom, _EPS), 0.0)
    w = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
    return (_channel(w) * a).sum(axis=1)


def _xgradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    w = (g * a).sum(axis=(2, 3)) / (a.sum(axis=(2, 3)) + _EPS)
    return (_channel(w) * a).sum(axis=1)


def _hirescam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return (g * a).sum(axis=1)


def _layercam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return (np.maximum(g, 0) * a).sum(axis=1)


def _eigengradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The projection of ``G ⊙ A`` on its first principal direction (not centred; float32
    SVD), signed to agree with the channel sum, as :func:`xcam.core.ops.first_component`."""
    b, c, h, w = a.shape
    flat = (g * a).astype(np.float32).reshape(b, c, h * w).transpose(0, 2, 1)  # [B, hw, C]
    if not np.isfinite(flat).all():  # an SVD of it can't converge
        raise NumericalError("the gradient-weighted activations are not finite (overflow)")
    _, _, vh = np.linalg.svd(flat, full_matrices=False)
    proj = (flat @ vh[:, 0, :, None])[:, :, 0]  # [B, hw]
    agree = (proj * flat.sum(axis=2)).sum(axis=1)
    return (proj * np.where(agree < 0, -1.0, 1.0)[:, None]).reshape(b, h, w)


RULES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gradcam": _gradcam,
    "gradcam++": _gradcam_pp,
    "xgradcam": _xgradcam,
    "hirescam": _hirescam,
    "layercam": _layercam,
    "eigengradcam": _eigengradcam,
}
# the methods whose map a file with in-graph gradients gives: those whose class declares
# ``in_graph`` (tests/test_lite_rules.py checks each rule against its class)
METHODS = tuple(RULES)


def layer_map(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``method``'s map of one layer, ``ReLU`` of its rule: ``[B, h, w]``."""
    return np.maximum(RULES[method](a, g), 0)


def as_map(t: np.ndarray, layout: Sequence | None, size: Sequence[int]) -> np.ndarray:
    """A layer's output (or its gradient) as ``[B, C, h, w]``, laid out as the file's
    ``token_layouts`` say (:class:`xcam.core.tokens.Layout` in numpy): ``[B, h, w, C]``
    permuted, ``[B, P + N, C]`` tokens without the ``P`` prefix tokens on their grid."""
    if layout is None:
        return t
    kind, prefix = layout
    if kind == "nhwc":
        return t.transpose(0, 3, 1, 2)
    grid = t[:, prefix:]
    h, w = grid_shape(grid.shape[1], size)
    return grid.transpose(0, 2, 1).reshape(t.shape[0], t.shape[2], h, w)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear ``[B, h, w] -> [B, H, W]`` (half-pixel centres, like torch's default)."""
    return bilinear(maps, size)


def normalize(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each ``[H, W]`` map to ``[0, 1]``; a flat one (its spread rounding, see
    :mod:`xcam.core.flat`) becomes zeros."""
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    still = (span <= RELATIVE_SPREAD * np.maximum(np.abs(hi), np.abs(lo))) & np.isfinite(span)
    scaled = (maps - lo) / np.where(still, 1.0, span)
    return np.clip(np.where(still, 0.0, scaled), 0.0, 1.0)


@dataclass
class LiteResult:
    maps: np.ndarray  # [B, H, W] float32 in [0, 1]
    logits: np.ndarray
    targets: np.ndarray  # class explained per sample
    layer_maps: dict[str, np.ndarray] = field(default_factory=dict)


class OnnxExplainer:
    """An ONNX file exported with gradients, run by ONNX Runtime; call it on a batch."""

    def __init__(
        self,
        path: str | Path,
        providers: Sequence | None = None,
        method: str = "gradcam",
        threads: int | None = None,
        spin: bool = True,
    ):
        if method not in RULES:
            raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
        self.path, self.method = Path(path), method
        # ONNX Runtime's default: idle workers spin (fastest when nothing else shares the cores)
        self.session = open_session(
            self.path, providers=list(providers or [CPU]), threads=threads, spin=spin
        )
        # checked as every xcam backend checks it: the file is untrusted input
        self.metadata = session_metadata(self.session, self.path.name)
        check_file_metadata(self.path.name, self.metadata, **session_signature(self.session))
        if not self.metadata.gradients:
            raise ValueError(
                f"{self.path.name} has no gradients in its graph; export it with --gradients"
            )
        self.layers: list[str] = list(self.metadata.layers)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def _check_shape(self, x: np.ndarray) -> None:
        problem = static_mismatch(self.path.name, self.metadata.input_shape, x.shape)
        if problem is not None:
            raise InputError(problem)

    def __call__(
        self, x: np.ndarray, targets: int | Sequence[int] | None = None, method: str | None = None
    ) -> LiteResult:
        method = method or self.method
        if method not in RULES:
            raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
        x = _check_input(x)
        self._check_shape(x)
        feed = self._feed(x, targets)
        names = self.metadata.output_names
        outs = dict(zip(names, self.session.run(names, feed), strict=True))
        logits = outs[LOGITS]
        if targets is not None:
            chosen = feed[TARGET_INPUT]
        elif logits.shape[1] == 1:  # the decision: a probability's flips at 0.5
            meta = self.metadata
            activation = None if meta.pre_activation else meta.activation
            chosen = (logits[:, 0] >= decision_threshold(activation)).astype(np.int64)
        else:
            chosen = logits.argmax(axis=1)
        size = (x.shape[2], x.shape[3])
        layouts = self.metadata.token_layouts
        layer_maps = {
            n: layer_map(
                method,
                as_map(outs[n], layouts.get(n), size),
                as_map(outs[grad_name(n)], layouts.get(n), size),
            )
            for n in self.layers
        }
        if method == "gradcam":
            maps = outs[GRADCAM]
        else:
            ups = [normalize(upsample(m, size)) for m in layer_maps.values()]
            maps = normalize(np.mean(ups, axis=0))
        if not (np.isfinite(maps).all() and np.isfinite(logits).all()):
            raise NumericalError(
                f"{self.path.name} gave non-finite logits or maps for this input (overflow in "
                "the model's activations or gradients)"
            )
        return LiteResult(maps.astype(np.float32), logits, chosen, layer_maps)

    def _feed(self, x: np.ndarray, targets: object) -> dict[str, np.ndarray]:
        """The session's inputs: the batch, and the class per sample where the file takes
        one (-1: its top-1 class), checked as the main library checks targets."""
        feed = {self.inputs[0]: x}
        k = int(self.metadata.num_classes or 0)
        wanted = None if targets is None else class_targets(targets, x.shape[0], k)
        if wanted is not None:
            if TARGET_INPUT not in self.inputs:
                raise XCamError(
                    f"{self.path.name} explains the top-1 class only (no target "
                    "input); re-export with --target-input"
                )
            feed[TARGET_INPUT] = np.asarray(wanted, dtype=np.int64)
        elif TARGET_INPUT in self.inputs:
            feed[TARGET_INPUT] = np.full((x.shape[0],), -1, dtype=np.int64)
        return feed


def _check_input(x: object) -> np.ndarray:
    """A finite float32 ``[B, C, H, W]`` batch, or the main library's InputError."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "fiu":
        raise InputError(f"the input must be a real number array, got {arr.dtype}")
    if arr.ndim == 3:
        raise InputError(
            f"the input is 3-D {arr.shape}: xcam takes a batch [B, C, H, W] (NCHW); for one "
            "image use x[None]"
        )
    if arr.ndim != 4:
        raise InputError(f"the input must be [B, C, H, W] (NCHW), got {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError("the input batch is empty")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError("the input contains NaN or infinite values (as float32)")
    return arr
