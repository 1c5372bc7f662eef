"""Class-index targets checked without torch (``xcam.lite`` serves with numpy alone):
the same rules and the same errors as :func:`xcam.core.targets.resolve_targets`."""

from __future__ import annotations

import numpy as np

from xcam.core.errors import TargetError

# the targets that explain every label a multi-label head says is present / every box a
# detector finds (a map each)
PRESENT = "present"
BOXES = "boxes"

# a single-logit (sigmoid) head's named targets: 1 explains the logit, 0 its negation
BINARY = {"positive": 1, "pos": 1, "negative": 0, "neg": 0}

# what a model's output may already have gone through: the last op of its forward, detected
# by xcam.core.final.final_activations. ``None``: raw scores (logits).
ACTIVATIONS = ("sigmoid", "softmax", "log_softmax")


def decision_threshold(activation: str | None) -> float:
    """Where a single-output head's decision flips: a logit at 0, a probability at 0.5."""
    return 0.5 if activation == "sigmoid" else 0.0


def class_targets(targets: object, batch: int, k: int) -> list[int]:
    """Class indices per sample, validated as :func:`xcam.core.targets.resolve_targets` does
    (the same errors): an int, a list of ints (1 or ``batch``), or for a single-logit head
    0 / 1 / ``"positive"`` / ``"negative"``."""
    if isinstance(targets, str):
        if k != 1:
            raise TargetError(
                f"target {targets!r} is for single-logit (sigmoid) heads; this model has {k} logits"
            )
        if targets.lower() not in BINARY:
            raise TargetError(f"binary target must be 'positive' or 'negative', got {targets!r}")
        return [BINARY[targets.lower()]] * batch
    if isinstance(targets, bool | np.bool_):
        raise TargetError("a target is a class index, not a bool")
    t = np.asarray(targets)
    if t.ndim == 0 and t.dtype.kind in "iu":
        values = [int(t)] * batch
    elif t.ndim == 1 and t.dtype.kind in "iu":
        if t.size not in (1, batch):
            raise TargetError(f"{t.size} targets given for a batch of {batch}; give 1 or {batch}")
        values = [int(v) for v in np.broadcast_to(t, (batch,))]
    else:
        raise TargetError(
            f"per-sample targets must be a 1-D list or tensor of ints, got {t.shape} {t.dtype}"
        )
    if k == 1:
        if any(v not in (0, 1) for v in values):
            raise TargetError("targets for a single-logit head are 1 (positive) or 0 (negative)")
        return values
    bad = [v for v in values if not 0 <= v < k]
    if bad:
        raise TargetError(f"target class {bad[0]} is out of range for {k} classes (0..{k - 1})")
    return values
