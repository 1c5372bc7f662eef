"""Targets: which score of the model an explanation is about.

- ``None``: the top-1 class (for a single-logit sigmoid head: the decision it made);
- an int: one class for every sample;
- a list / 1-D tensor of ints: one class per sample (length 1 or B);
- ``"positive"`` / ``"negative"``: for a single-logit sigmoid head, the logit or its negation;
- a callable ``logits -> scores[B]``: any differentiable score (regression, multi-output);
  without ``output=``, it receives the model's whole output (a tuple or dict of heads too),
  so ``lambda out: out[0][:, 0] + out[1][:, 0]`` explains the sum of two heads;
- a list of callables, one per sample (or one for all), each ``output[i] -> score``:
  pytorch-grad-cam's target objects (``ClassifierOutputTarget(281)``) work unchanged;
- ``"present"``: for a multi-label head (independent sigmoids), every label the model says
  is present, one map each (see :func:`present_labels`);
- for a detector (one dict of ``boxes``, ``labels``, ``scores`` per image, torchvision's
  detection models): :class:`BoxTarget` per sample, or ``"boxes"``: every box it detects,
  one map each (see :func:`detected_boxes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xcam.core.decision import BINARY, PRESENT, decision_threshold
from xcam.core.errors import TargetError

TargetFn = Callable[[torch.Tensor], torch.Tensor]
Targets = None | int | str | Sequence[int] | torch.Tensor | TargetFn | Sequence[Callable]


BOX_SCORE = 0.5  # the detections "boxes" explains: those scored at least this


def present_labels(flat: torch.Tensor, activation: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(samples, labels)``: every label a multi-label head says is present in each sample
    of its ``[B, K]`` output — a probability of at least 0.5, that is a logit of at least 0,
    or an output of at least 0.5 where the model ends in a sigmoid. Sample by sample, labels
    in increasing order. A softmax head picks one class, not several: a
    :class:`TargetError`."""
    if activation in ("softmax", "log_softmax"):
        raise TargetError(
            f"target 'present' is for multi-label heads (independent sigmoids); this model "
            f"ends in {activation}, whose classes exclude each other: explain the top-1 "
            "(targets=None) or chosen classes"
        )
    pairs = (flat.detach() >= decision_threshold(activation)).nonzero()
    return pairs[:, 0], pairs[:, 1]


def describe_output(out: dict | tuple | list) -> str:
    """``'logits': Tensor[2, 10], 'aux': tuple`` — what each entry of an output is."""
    items = out.items() if isinstance(out, dict) else enumerate(out)

    def what(v: object) -> str:
        if isinstance(v, torch.Tensor):
            return f"Tensor{list(v.shape)}"
        return type(v).__name__

    return ", ".join(f"{k!r}: {what(v)}" for k, v in items)


def _call(fn: Callable, out: object) -> object:
    """``fn(out)``. A target function's own exception passes through unchanged, with a note
    of what it was given; one that can't read a tuple / dict output it was given whole is a
    :class:`TargetError` that says how to give it one part instead."""
    try:
        return fn(out)
    except Exception as e:
        if isinstance(out, torch.Tensor):
            e.add_note(
                f"xcam gave the target callable the model's output Tensor{list(out.shape)} "
                "(with output= or an exported file: the part chosen)"
            )
            raise
        kind, pick = ("dict", "output=KEY") if isinstance(out, dict) else ("tuple", "output=INDEX")
        raise TargetError(
            f"the target callable failed on the model's whole output, a {kind} "
            f"({describe_output(out)}): {type(e).__name__}: {e}. Without output=, a callable "
            f"target receives the whole output; choose one part with {pick} (--output on the "
            "command line)"
        ) from None


def per_image(out: object) -> bool:
    """Whether a model output is a list of one dict per image (a detector's), not tensors
    with a batch dimension: its batch is the list's length, its sample ``i`` the ``i``-th
    dict. (A tuple of dicts stays what it is elsewhere: heads, chosen with ``output=``.)"""
    return isinstance(out, list) and len(out) > 0 and all(isinstance(o, dict) for o in out)


def output_tensors(out: object) -> list[torch.Tensor]:
    """The tensors of a model output, in order: a tensor, or a tuple / list / dict of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return [t for o in out for t in output_tensors(o)]
    return []


def batch_size(out: object) -> int:
    """The batch of a model output (its first tensor's first dimension; a detector's: its
    number of dicts)."""
    if per_image(out):
        return len(out)
    tensors = output_tensors(out)
    if not tensors or tensors[0].dim() == 0:
        raise TargetError(f"the model returned {type(out).__name__}, with no batch of tensors")
    return tensors[0].shape[0]


def sample_of(out: object, i: int) -> object:
    """Sample ``i`` of a model output, keeping its structure."""
    if per_image(out):
        return out[i]
    if isinstance(out, torch.Tensor):
        return out[i]
    if isinstance(out, dict):
        return {k: sample_of(v, i) for k, v in out.items()}
    if isinstance(out, tuple | list):
        return type(out)(sample_of(v, i) for v in out)
    return out


def repeated(out: object, n: int) -> object:
    """A one-sample model output as a batch of ``n`` copies, keeping its structure."""
    if per_image(out):
        return type(out)(out[0] for _ in range(n))
    if isinstance(out, torch.Tensor):
        return out.expand(n, *out.shape[1:])
    if isinstance(out, dict):
        return {k: repeated(v, n) for k, v in out.items()}
    if isinstance(out, tuple | list):
        return type(out)(repeated(v, n) for v in out)
    return out


def flat_output(out: object) -> torch.Tensor:
    """Every tensor of a model output, flattened per sample and side by side: ``[B, N]``; a
    detector's: each image's detection scores, padded with zeros to the longest."""
    if per_image(out):
        scores = [_detections(o)[2].detach().reshape(-1) for o in out]
        n = max(len(v) for v in scores)
        return torch.stack([F.pad(v, (0, n - len(v))) for v in scores])
    tensors = output_tensors(out)
    b = batch_size(out)
    return torch.cat([t.reshape(b, -1) for t in tensors], dim=1)


def flatten_logits(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` as is; ``[B, K, 1, 1]`` (a fully convolutional head) becomes ``[B, K]``."""
    if per_image(logits):
        raise TargetError(
            "the model is a detector (a dict of boxes, labels and scores per image): explain "
            "one of its boxes with targets=[xcam.BoxTarget(label, box)] (one per image), or "
            'every box it finds with targets="boxes"'
        )
    if not isinstance(logits, torch.Tensor):
        raise TargetError(
            f"the model returned {type(logits).__name__}, not a tensor of logits; wrap it so "
            "that forward returns one [B, K] tensor"
        )
    if logits.dim() == 2:
        return logits
    if logits.dim() > 2 and all(s == 1 for s in logits.shape[2:]):
        return logits.reshape(logits.shape[0], logits.shape[1])
    if logits.dim() == 1:
        return logits[:, None]
    raise TargetError(
        f"logits of shape {tuple(logits.shape)} are neither [B, K] nor [B, K, 1, 1]; "
        "pass a callable target that maps them to one score per sample"
    )


@dataclass
class Resolved:
    """Scores to explain (``[B]``, differentiable) and the class index behind each, if any.

    For a single-logit head, ``classes`` is 1 for the positive and 0 for the negative decision.
    """

    scores: torch.Tensor
    classes: torch.Tensor | None
    sign: torch.Tensor | None = None  # +1 / -1 per sample for single-logit heads
    # the final activation the model's output went through ("sigmoid", "softmax",
    # "log_softmax"; see xcam.core.decision.ACTIVATIONS), None for raw logits
    activation: str | None = None


def _per_sample(targets: Sequence[int] | torch.Tensor, batch: int) -> torch.Tensor:
    t = torch.as_tensor(targets)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TargetError(
            f"per-sample targets must be a 1-D list or tensor of ints, got {tuple(t.shape)} "
            f"{t.dtype}"
        )
    if t.numel() not in (1, batch):
        raise TargetError(f"{t.numel()} targets given for a batch of {batch}; give 1 or {batch}")
    return t.long().expand(batch).clone()


def score_functions(targets: object) -> bool:
    """Whether ``targets`` are score functions: one callable for the batch, or a list of
    callables, one per sample (pytorch-grad-cam's target objects)."""
    if isinstance(targets, torch.Tensor):
        return False
    if callable(targets):
        return True
    return (
        isinstance(targets, list | tuple)
        and len(targets) > 0
        and all(callable(t) and not isinstance(t, torch.Tensor) for t in targets)
    )


@dataclass(frozen=True)
class RegionTarget:
    """A segmentation model's class ``category`` over a region: the sum of its scores
    inside ``mask``, as pytorch-grad-cam's ``SemanticSegmentationTarget``:

        S = sum_ij M_ij · Y_k,ij

    ``mask``: ``[H, W]`` (or ``[B, H, W]``) of 0 / 1, bools or weights at the output's size;
    None: where the output it is given predicts ``category`` (argmax over the classes).
    Called on a batch ``[B, K, H, W]`` (``targets=RegionTarget(k)``) or on one sample's
    ``[K, H, W]`` (``targets=[RegionTarget(k, m0), RegionTarget(k, m1)]``, one per sample:
    the form for masks that differ by sample). Methods that re-score masked inputs
    (Score-CAM, Ablation-CAM) see, without a mask, the region each variant predicts; give
    the mask to keep one region. Choose the output with ``output="out"`` for torchvision's
    segmentation models (their output is a dict).

    Example::

        >>> import torch
        >>> y = torch.zeros(1, 3, 2, 2); y[0, 1, 0] = 2.0  # class 1 wins the top row
        >>> RegionTarget(1)(y).tolist()
        [4.0]
    """

    category: int
    mask: torch.Tensor | None = None

    def __repr__(self) -> str:  # short and stable: a job's run record holds it
        if self.mask is None:
            return f"RegionTarget({self.category}, mask=predicted)"
        m = torch.as_tensor(self.mask).float()
        return f"RegionTarget({self.category}, mask={list(m.shape)} sum={float(m.sum()):g})"

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TargetError(
                f"RegionTarget explains a segmentation output [B, K, H, W] (or one sample's "
                f"[K, H, W]), got {got}; for a dict output choose it with output='out'"
            )
        y = out[None] if out.dim() == 3 else out
        k = y.shape[1]
        if isinstance(self.category, bool) or not 0 <= int(self.category) < k:
            raise TargetError(
                f"RegionTarget category {self.category!r} is out of range for {k} classes"
            )
        if self.mask is None:
            mask = (y.detach().argmax(dim=1) == self.category).to(y.dtype)
        else:
            mask = torch.as_tensor(self.mask).to(device=y.device, dtype=y.dtype)
            if (
                mask.dim() not in (2, 3)
                or mask.shape[-2:] != y.shape[-2:]
                or (mask.dim() == 3 and mask.shape[0] != y.shape[0])
            ):
                raise TargetError(
                    f"the region mask is {tuple(mask.shape)}; the output's classes are "
                    f"{tuple(y.shape[-2:])} maps, for {y.shape[0]} sample(s): give [H, W] "
                    "(or [B, H, W]) at the output's size"
                )
        score = (y[:, self.category] * mask).sum(dim=(1, 2))
        return score[0] if out.dim() == 3 else score


def _detections(out: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(boxes [N, 4], labels [N], scores [N])`` of one image's detections, checked."""
    keys = ("boxes", "labels", "scores")
    if not isinstance(out, dict) or not all(isinstance(out.get(k), torch.Tensor) for k in keys):
        got = describe_output(out) if isinstance(out, dict | list | tuple) else type(out).__name__
        raise TargetError(
            "a box target explains a detector's output: per image a dict of 'boxes' [N, 4], "
            f"'labels' [N] and 'scores' [N] (torchvision's detection models), got {got}"
        )
    return out["boxes"], out["labels"], out["scores"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``a [N, 4]`` and ``b [M, 4]`` (x1, y1, x2, y2):
    ``[N, M]``."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


@dataclass(frozen=True)
class BoxTarget:
    """One box of a detector's output: the score of the detection that overlaps ``box`` most,
    plus that overlap, if it exceeds ``iou_threshold`` and is of class ``label`` — the
    box-score target of pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``, for one box:

        S = IoU(b, b_j*) + s_j*,   j* = argmax_j IoU(b, b_j)

    (0 when ``b_j*`` is another class or overlaps too little: the map is then flagged
    degenerate). ``box``: ``(x1, y1, x2, y2)`` in input pixels. Called on one image's dict
    of ``boxes``, ``labels``, ``scores`` (``targets=[BoxTarget(...)]``, one per sample), or on
    the whole list (one score per image).

    Example::

        >>> import torch
        >>> out = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([3]),
        ...        "scores": torch.tensor([0.9])}
        >>> float(BoxTarget(3, (0, 0, 10, 5))(out))  # IoU 0.5 is not above 0.5
        0.0
        >>> round(float(BoxTarget(3, (0, 0, 10, 8))(out)), 3)  # 0.8 + 0.9
        1.7
    """

    label: int
    box: tuple[float, float, float, float]
    iou_threshold: float = 0.5

    def __post_init__(self) -> None:
        try:
            box = tuple(float(v) for v in torch.as_tensor(self.box).reshape(-1).tolist())
        except (TypeError, ValueError, RuntimeError):
            box = ()
        if (
            len(box) != 4
            or not all(map(math.isfinite, box))
            or not (box[0] <= box[2] and box[1] <= box[3])
        ):
            raise TargetError(
                f"a box is (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, got {self.box!r}"
            )
        if isinstance(self.label, bool) or not isinstance(self.label, int | torch.Tensor):
            raise TargetError(f"a box's label is a class index, got {self.label!r}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "label", int(self.label))

    def __repr__(self) -> str:  # short and stable: a job's run record holds it
        box = ", ".join(f"{v:g}" for v in self.box)
        return f"BoxTarget({self.label}, ({box}))"

    def __call__(self, out: object) -> torch.Tensor:
        if per_image(out):
            return torch.stack([self(o) for o in out])
        boxes, labels, scores = _detections(out)
        if len(boxes) == 0:
            return scores.sum()  # no detections: 0, still part of the graph
        iou = box_iou(torch.tensor([self.box], dtype=boxes.dtype, device=boxes.device), boxes)[0]
        j = int(iou.detach().argmax())
        if float(iou[j].detach()) <= self.iou_threshold or int(labels[j]) != self.label:
            return scores[j] * 0
        return iou[j] + scores[j]


def detected_boxes(out: object, min_score: float = BOX_SCORE) -> tuple[torch.Tensor, list]:
    """``targets="boxes"``: every detection scored at least ``min_score``, as ``(samples,
    [BoxTarget])``: which image each box is in, and its target (best first per image)."""
    samples, found = [], []
    for i in range(batch_size(out)):
        boxes, labels, scores = _detections(sample_of(out, i))
        for j in scores.detach().argsort(descending=True).tolist():
            if float(scores[j]) >= min_score:
                samples.append(i)
                found.append(BoxTarget(int(labels[j]), tuple(boxes[j].detach().tolist())))
    return torch.tensor(samples, dtype=torch.long), found


def is_class_maps(out: object) -> bool:
    """Whether an output is class maps ``[B, K, H, W]`` (a segmentation model's), not
    logits (``[B, K]``, or ``[B, K, 1, 1]`` from a fully convolutional head)."""
    return isinstance(out, torch.Tensor) and out.dim() == 4 and tuple(out.shape[2:]) != (1, 1)


def covering_classes(maps: torch.Tensor) -> torch.Tensor:
    """``[B]``: per sample, the class that covers most pixels of class maps ``[B, K, H, W]``
    (by argmax per pixel; ties: the lowest class)."""
    pred = maps.detach().argmax(dim=1).flatten(1)
    return F.one_hot(pred, maps.shape[1]).sum(dim=1).argmax(dim=1)


def per_sample_scores(
    logits: torch.Tensor, fns: Sequence[Callable], rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``scores[i] = fns[rows[i]](logits[i])``: each sample's own function on its own output
    (a 1-D row, as pytorch-grad-cam's ``ClassifierOutputTarget`` and friends expect); one
    function serves every sample."""
    n = batch_size(logits)
    owners = range(n) if rows is None else rows.tolist()
    scores = []
    for i, owner in enumerate(owners):
        fn = fns[0] if len(fns) == 1 else fns[owner]
        value = _call(fn, sample_of(logits, i))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TargetError(
                f"a per-sample target must return one score for its sample's output, got {shape}"
            )
        scores.append(value.reshape(()))
    return torch.stack(scores)


def resolve_targets(
    logits: torch.Tensor, targets: Targets, activation: str | None = None
) -> Resolved:
    """Turn ``targets`` into one differentiable score per sample of ``logits``.

    ``activation``: what the model's output already went through (a final ``Sigmoid``
    makes a single output a probability, whose decision flips at 0.5, not at 0)."""
    found = _resolve(logits, targets, activation)
    found.activation = activation
    return found


def _resolve(logits: torch.Tensor, targets: Targets, activation: str | None) -> Resolved:
    if score_functions(targets) and not callable(targets):  # one function per sample
        fns = list(targets)  # type: ignore[arg-type]
        b = batch_size(logits)
        if len(fns) not in (1, b):
            raise TargetError(
                f"{len(fns)} target functions given for a batch of {b}; give 1 or {b}"
            )
        return Resolved(per_sample_scores(logits, fns), None)
    if callable(targets) and not isinstance(targets, torch.Tensor):
        scores = _call(targets, logits)
        if not isinstance(scores, torch.Tensor):
            raise TargetError(f"the target callable returned {type(scores).__name__}, not a tensor")
        b = batch_size(logits)
        if scores.shape not in ((b,), (b, 1)):
            raise TargetError(
                f"the target callable must return one score per sample, shape [{b}], "
                f"got {tuple(scores.shape)}"
            )
        return Resolved(scores.reshape(b), None)

    flat = flatten_logits(logits)
    b, k = flat.shape
    if k == 1:
        return _resolve_binary(flat[:, 0], targets, activation)
    if isinstance(targets, str):
        what = (
            "multi-label explainers' calls"
            if targets == PRESENT
            else "single-logit (sigmoid) heads"
        )
        raise TargetError(f"target {targets!r} is for {what}; this model has {k} logits")
    if targets is None:
        classes = flat.detach().argmax(dim=1)
    else:
        classes = _given_classes(targets, b, k).to(flat.device)
    scores = flat.gather(1, classes[:, None])[:, 0]
    return Resolved(scores, classes)


def _given_classes(targets: Targets, b: int, k: int) -> torch.Tensor:
    """The caller's class index(es) as ``[b]``, each checked against ``k`` classes."""
    if isinstance(targets, bool):
        raise TargetError("a target is a class index, not a bool")
    if isinstance(targets, int):
        classes = torch.full((b,), targets, dtype=torch.long)
    else:
        classes = _per_sample(targets, b)
    bad = (classes < 0) | (classes >= k)
    if bool(bad.any()):
        raise TargetError(
            f"target class {int(classes[bad][0])} is out of range for {k} classes (0..{k - 1})"
        )
    return classes


def decision_score(
    output: torch.Tensor, sign: torch.Tensor, activation: str | None, probability: bool = False
) -> torch.Tensor:
    """The score of a single-output head's decision (``sign`` +1 positive, -1 negative): a
    logit ``z`` gives ``z`` or ``-z`` (with ``probability``, their sigmoid); a probability
    ``p`` (a final sigmoid) gives ``p`` or ``1 - p``. Either way its gradient is the
    output's, signed."""
    if activation == "sigmoid":
        return torch.where(sign > 0, output, 1 - output)
    signed = output * sign
    return torch.sigmoid(signed) if probability else signed


def probabilities(flat: torch.Tensor, activation: str | None = None) -> torch.Tensor:
    """Every class's probability in ``[B, K]`` scores: the softmax of logits (of one logit,
    its sigmoid), or, where the scores already went through ``activation``, the scores as
    they are (a log-softmax's exponent)."""
    if activation == "log_softmax":
        return flat.exp()
    if activation in ("sigmoid", "softmax"):
        return flat
    return torch.sigmoid(flat) if flat.shape[1] == 1 else flat.softmax(dim=1)


def class_probability(
    flat: torch.Tensor, classes: torch.Tensor, activation: str | None = None
) -> torch.Tensor:
    """The probability of each row's class in ``[B, K]`` scores (see :func:`probabilities`);
    for one logit, of the decision: class 1 positive, 0 negative (``1 - p``)."""
    if flat.shape[1] == 1:
        sign = classes.to(flat.dtype) * 2 - 1
        return decision_score(flat[:, 0], sign, activation, probability=True)
    return probabilities(flat, activation).gather(1, classes[:, None])[:, 0]


def _resolve_binary(logit: torch.Tensor, targets: Targets, activation: str | None) -> Resolved:
    """A single-output head: explain the positive (the output) or the negative (its
    negation) decision; by default the decision made, ``output >= threshold``."""
    b = logit.shape[0]
    if targets is None:
        positive = (logit.detach() >= decision_threshold(activation)).long()
    elif isinstance(targets, str):
        key = targets.lower()
        if key not in BINARY:
            raise TargetError(f"binary target must be 'positive' or 'negative', got {targets!r}")
        positive = torch.full((b,), BINARY[key], dtype=torch.long)
    elif isinstance(targets, int) and not isinstance(targets, bool):
        if targets not in (0, 1):
            raise TargetError(
                f"target {targets} is out of range for a single-logit head: use 1 (positive) "
                "or 0 (negative)"
            )
        positive = torch.full((b,), targets, dtype=torch.long)
    else:
        positive = _per_sample(targets, b)  # type: ignore[arg-type]
        if bool(((positive != 0) & (positive != 1)).any()):
            raise TargetError("targets for a single-logit head are 1 (positive) or 0 (negative)")
    positive = positive.to(logit.device)
    sign = positive.to(logit.dtype) * 2 - 1
    return Resolved(decision_score(logit, sign, activation), positive, sign)


def reported_logits(logits: Any) -> torch.Tensor:
    """What a result reports as its logits: ``[B, K]``; a regression output as it is; the
    heads of a tuple / dict output (seen by a callable target) flattened side by side."""
    if not isinstance(logits, torch.Tensor):
        return flat_output(logits).detach()
    try:
        return flatten_logits(logits.detach())
    except TargetError:  # e.g. a regression output explained through a callable target
        return logits.detach()
