"""Explain image files end to end: read, batch, explain, write overlays, maps and predictions.

Used by ``xcam explain`` and ``xcam demo``. Unreadable images are reported and skipped;
the rest of the job finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xcam.core.errors import InputError, OutputError
from xcam.core.result import Attribution
from xcam.core.targets import BOXES, PRESENT, Targets, probabilities, score_functions
from xcam.images import load_image, preprocess
from xcam.methods.base import BaseCAM
from xcam.models import ModelInfo
from xcam.record import SUMMARY, Record, differences, image_key, image_stamp


@dataclass
class JobReport:
    """What an explain job wrote and what it could not do."""

    out: Path
    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    predictions: Path | None = None
    skipped: int = 0  # images already explained by an earlier, identical run


def top_predictions(
    logits: torch.Tensor, info: ModelInfo, k: int = 5, activation: str | None = None
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities: the softmax of raw logits (the sigmoid for a
    single-logit head), or, where the model's output already is a probability
    (``activation``: a final Sigmoid / Softmax, or LogSoftmax), that output as it is. For a
    segmentation output ``[K, H, W]``: the classes covering most pixels, with their share."""
    logits = logits.detach().float().cpu()
    if logits.dim() == 3 and logits.shape[1] * logits.shape[2] > 1:  # a segmentation output
        classes = logits.shape[0]
        share = torch.bincount(logits.argmax(0).flatten(), minlength=classes) / logits[0].numel()
        top = share.topk(min(k, classes))
        return [
            {"class": int(c), "name": info.class_name(int(c)), "pixels": float(f)}
            for f, c in zip(top.values, top.indices, strict=True)
        ]
    if logits.dim() != 1:
        return [{"output": logits.tolist()}]
    probs = probabilities(logits[None], activation)[0]  # a sigmoid's: one, or multi-label
    if logits.numel() == 1:
        row = {"class": 1, "name": "positive", "probability": float(probs[0])}
        if activation is None:  # a raw logit, reported beside its probability
            row["logit"] = float(logits[0])
        return [row]
    top = probs.topk(min(k, probs.numel()))
    return [
        {"class": int(c), "name": info.class_name(int(c)), "probability": float(p)}
        for p, c in zip(top.values, top.indices, strict=True)
    ]


def _target_name(info: ModelInfo, result: Any, target: int) -> str:
    """A class's name; a single-output head's decision is ``positive`` or ``negative``."""
    if result.logits.dim() == 2 and result.logits.shape[1] == 1:
        return "positive" if target == 1 else "negative"
    return info.class_name(target)


def run_settings(info: ModelInfo, method: BaseCAM, targets: Targets, **extra: Any) -> dict:
    """Every option that changes a job's outputs, as plain data: two jobs with equal
    settings write identical files (the model's weights enter by their hash)."""
    if score_functions(targets):
        fns = [targets] if callable(targets) else list(targets)  # type: ignore[arg-type]
        target = "callable " + ", ".join(getattr(f, "__qualname__", None) or repr(f) for f in fns)
    else:
        target = repr(targets.tolist() if isinstance(targets, torch.Tensor) else targets)
    return {
        "model": info.spec,
        "model_sha256": info.fingerprint,
        **method.settings(),
        "input_size": list(info.input_size),
        "mean": list(info.mean),
        "std": list(info.std),
        "target": target,
        **extra,
    }


def explain_files(
    info: ModelInfo,
    paths: Sequence[Path],
    method: BaseCAM,
    out: Path,
    targets: Targets = None,
    batch_size: int = 8,
    alpha: float = 0.5,
    colormap: str = "jet",
    device: str | torch.device = "cpu",
    on_progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    wait: bool = False,
    echo: Callable[[str], None] | None = None,
) -> JobReport:
    """Explain each image of ``paths`` and write ``<stem>_<method>.png`` / ``.npy`` to ``out``.

    The ``.npy`` map is float32 in ``[0, 1]`` at the image's own size, aligned with the
    overlay. A method whose maps are input-shaped attributions ``[B, C, H, W]`` (Guided
    Backprop, Guided Grad-CAM) writes instead the attribution's picture
    (:func:`xcam.viz.attribution_image`) and the raw float32 ``[C, H_img, W_img]``
    attribution, resized bilinearly; each item's ``kind`` is ``"attribution"`` or
    ``"heatmap"``. ``predictions.json`` lists every image's top classes, target and files.

    Safety of the folder (see :mod:`xcam.record`):

    - one job at a time per folder: another gets an :class:`OutputError` (or, with
      ``wait``, waits);
    - every option that changes an output is the *run*; a folder holds one run. The same
      run again resumes: images already done are skipped, new ones are added (a run over
      some of the images keeps the others' entries). A different run, or files the record
      doesn't list, are an :class:`OutputError` unless ``overwrite``, which discards the
      previous run's record and files;
    - files are written atomically and the record as images finish, so an interrupted job
      leaves whole files and resumes where it stopped.
    """
    from xcam.files import locked_folder

    say = echo or (lambda _line: None)
    unique = _unique_images(paths, say)
    run = run_settings(info, method, targets, alpha=alpha, colormap=colormap)
    with locked_folder(out, wait):
        record = _record_for(out, run, overwrite)
        unique, stems = _plan(out, record, unique, method.name, overwrite, say)
        record.open()
        todo, report = _resume(out, record, unique, say, on_progress)
        complete = False
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                _explain_chunk(info, chunk, method, record, stems, targets, alpha, colormap, device)
                if on_progress is not None:
                    on_progress(len(chunk))
            complete = True
        finally:
            report.predictions = record.close(_summary(info, method), complete)
    _collect(report, record, set(unique))
    return report


def _unique_images(paths: Sequence[Path], say: Callable[[str], None]) -> dict[str, Path]:
    """The images by :func:`~xcam.record.image_key`, in order; one given twice is explained
    once (the first path names it)."""
    unique: dict[str, Path] = {}
    for p in map(Path, paths):
        key = image_key(p)
        if key in unique:
            say(f"note: {p} is given more than once; explained once")
        unique.setdefault(key, p)
    return unique


def _plan(
    out: Path,
    record: Record,
    unique: dict[str, Path],
    method_name: str,
    overwrite: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, Path], dict[str, str]]:
    """The images to explain (not this run's own outputs, e.g. with ``-o .`` beside the
    images) and every image's stem: the record's for images it knows, a new unique one for
    the rest. Files the new stems would replace that the record doesn't list are refused."""
    from xcam.files import unique_stems

    mine = {image_key(out / n) for n in record.owned}
    if any(k in mine for k in unique):
        say(f"note: skipped this run's own outputs in {out}")
        unique = {k: p for k, p in unique.items() if k not in mine}
    known = {k: i["stem"] for k, i in record.items.items()}
    fresh = [p for k, p in unique.items() if k not in known]
    new = unique_stems(fresh, taken=known.values())
    stems = {**known, **{image_key(p): s for p, s in new.items()}}
    _refuse_foreign(out, record, [f"{s}_{method_name}" for s in new.values()], overwrite)
    return unique, stems


def _resume(
    out: Path,
    record: Record,
    unique: dict[str, Path],
    say: Callable[[str], None],
    on_progress: Callable[[int], None] | None,
) -> tuple[list[Path], JobReport]:
    """The images still to explain and the job's report; images an earlier run of the same
    settings finished are skipped, said and counted as progress."""
    todo = [p for k, p in unique.items() if not _done(record, k, p)]
    report = JobReport(out, skipped=len(unique) - len(todo))
    if report.skipped:
        say(f"resuming: {report.skipped} of {len(unique)} image(s) already explained")
        if on_progress is not None:
            on_progress(report.skipped)
    return todo, report


def _summary(info: ModelInfo, method: BaseCAM) -> dict[str, Any]:
    """What ``predictions.json`` says of the job beside its images."""
    return {
        "model": info.spec,
        "method": method.name,
        "layers": method.layers,
        "input_size": list(info.input_size),
    }


def _collect(report: JobReport, record: Record, keys: set[str]) -> None:
    """Fill ``report`` with the record's items and errors of this job's images (the record
    may hold other images of the same run)."""
    report.items = [i for k, i in record.items.items() if k in keys]
    report.errors = [
        {"image": e["image"], "error": e["error"]} for k, e in record.errors.items() if k in keys
    ]


def _done(record: Record, key: str, path: Path) -> bool:
    try:
        return record.done(key, image_stamp(path))
    except OSError:
        return False


def _record_for(out: Path, run: dict[str, Any], overwrite: bool) -> Record:
    """The record to continue (the same run), or a new one. Another run's record is an
    :class:`OutputError` unless ``overwrite``, which removes it and the files it lists."""
    try:
        old = Record.read(out)
    except ValueError as e:  # a journal xcam can't read: not ours to replace unasked
        if not overwrite:
            raise OutputError(
                f"{e}; pass --overwrite (overwrite=True) or choose another --out"
            ) from None
        old = None
    if old is not None and old.run == run:
        return old
    if old is not None and not (old.owned or old.items or old.errors):
        return Record(out, run)  # a run that ended before its first image: nothing to lose
    if old is not None:
        if not overwrite:
            diff = "; ".join(differences(old.run, run))
            raise OutputError(
                f"{out} holds the outputs of a different run ({diff}); pass --overwrite "
                "(overwrite=True) to replace them, or choose another --out"
            )
        for name in old.files():
            (out / name).unlink(missing_ok=True)
    elif (out / SUMMARY).exists() and not overwrite:  # a record without its journal
        raise OutputError(
            f"{out} already holds a {SUMMARY} written by a different run or by something "
            "else; pass --overwrite (overwrite=True) to replace it, or choose another --out"
        )
    return Record(out, run)


def _refuse_foreign(out: Path, record: Record, stems: list[str], overwrite: bool) -> None:
    """Files this run would write that its record doesn't list are someone else's."""
    listed = record.owned
    names = [f"{s}{ext}" for s in stems for ext in (".png", ".npy")]
    foreign = [n for n in names if n not in listed and (out / n).exists()]
    if foreign and not overwrite:
        raise OutputError(
            f"{out} already holds {len(foreign)} file(s) this run would replace (e.g. "
            f"{foreign[0]}), written by a different run or by something else; pass --overwrite "
            "(overwrite=True) to replace them, or choose another --out"
        )


def _explain_chunk(info, chunk, method, record, stems, targets, alpha, colormap, device) -> None:
    """Explain one batch of image files; each image's outputs, then its journal line."""
    loaded = []
    for p in chunk:
        try:
            im = load_image(p)  # first: it names a missing or unreadable file best
            loaded.append((p, image_stamp(p), im))
        except (InputError, OSError) as e:
            msg = str(e) if isinstance(e, InputError) else f"{p}: {e}"
            record.add({"key": image_key(p), "image": str(p), "error": msg})
    if not loaded:
        return
    x = preprocess([im for _, _, im in loaded], info.input_size, info.mean, info.std)
    if targets in (PRESENT, BOXES):
        _explain_rows(info, loaded, x.to(device), method, record, stems, alpha, colormap, targets)
        return
    result = method(x.to(device), targets=targets).cpu()
    for i, (p, stamp, im) in enumerate(loaded):
        key = image_key(p)  # a realpath: resolved once per image
        stem = f"{stems[key]}_{method.name}"
        record.claim([f"{stem}.npy", f"{stem}.png"])
        pixels = isinstance(result, Attribution)
        kind = _write_outputs(record.out, stem, im, result.maps[i], pixels, alpha, colormap)
        target = int(result.targets[i]) if isinstance(result.targets, torch.Tensor) else None
        row = {
            "key": key,
            "stamp": stamp,
            "stem": stems[key],
            "image": str(p),
            "predictions": top_predictions(result.logits[i], info, activation=result.activation),
            "target": target,
            "target_name": None if target is None else _target_name(info, result, target),
            "score": float(result.scores[i]),
            "kind": kind,
            "overlay": f"{stem}.png",
            "map": f"{stem}.npy",
            "degenerate": bool(result.degenerate[i]),
        }
        if not bool(torch.isfinite(result.logits[i]).all()):  # strict JSON has no inf / NaN
            row["warning"] = (
                "the model's output holds infinite or NaN values: the probabilities and "
                "scores that depend on them are null"
            )
        record.add(row)


def _explain_rows(info, loaded, x, method, record, stems, alpha, colormap, kind) -> None:
    """``--class present`` / ``--class boxes``: per image, an overlay and a map for every
    label its multi-label head says is present (``<stem>_<label>_<method>``), or for every
    box a detector finds (``<stem>_box<n>_<label>_<method>``, the box drawn on the overlay),
    and its rows in the record. A file of those names that this run did not write fails the
    image, never gets replaced."""
    result = method(x, targets=kind).cpu()
    rows_of = [(result.samples == i).nonzero()[:, 0].tolist() for i in range(len(loaded))]
    boxes = kind == BOXES
    logits = {} if boxes else _image_logits(method, x, result, rows_of)
    for i, (p, stamp, im) in enumerate(loaded):
        key = image_key(p)
        rows = rows_of[i]
        if boxes:
            labels = [int(result.targets[r].label) for r in rows]
            stem_of = {
                r: f"{stems[key]}_box{n}_{label}_{method.name}"
                for n, (r, label) in enumerate(zip(rows, labels, strict=True))
            }
        else:
            stem_of = {r: f"{stems[key]}_{int(result.targets[r])}_{method.name}" for r in rows}
        names = [f"{stem}{ext}" for stem in stem_of.values() for ext in (".npy", ".png")]
        foreign = [n for n in names if n not in record.owned and (record.out / n).exists()]
        if foreign:
            record.add(
                {
                    "key": key,
                    "image": str(p),
                    "error": (
                        f"{p}: its output {foreign[0]} is already in {record.out}, written by a "
                        "different run or by something else; pass --overwrite (overwrite=True) to "
                        "replace it, or choose another --out"
                    ),
                }
            )
            continue
        record.claim(names)
        entries = []
        for r, stem in stem_of.items():
            _write_outputs(record.out, stem, im, result.maps[r], False, alpha, colormap)
            entry = {
                "score": float(result.scores[r]),
                "overlay": f"{stem}.png",
                "map": f"{stem}.npy",
                "degenerate": bool(result.degenerate[r]),
            }
            if boxes:
                target = result.targets[r]
                box = _drawn_box(record.out / f"{stem}.png", target, x.shape[-2:], info)
                label = {"class": target.label, "name": info.class_name(target.label)}
                entries.append({**label, "box": box, **entry})
            else:
                label = int(result.targets[r])
                entries.append({"class": label, "name": info.class_name(label), **entry})
        row = {"key": key, "stamp": stamp, "stem": stems[key], "image": str(p), "target": kind}
        if boxes:
            row["boxes"] = entries
        else:
            row["predictions"] = top_predictions(logits[i], info, activation=result.activation)
            row["labels"] = entries
        record.add({**row, "kind": "heatmap"})


def _image_logits(method, x, result, rows_of) -> dict[int, torch.Tensor]:
    """Each image's logits: a row's for an image with rows (each row's logits are its
    image's), one forward for those without."""
    bare = [i for i, rows in enumerate(rows_of) if not rows]
    found = method.source.forward(method.output)(x[bare]).detach().cpu() if bare else None
    logits = {i: found[j] for j, i in enumerate(bare)}
    logits.update({i: result.logits[rows[0]] for i, rows in enumerate(rows_of) if rows})
    return logits


def _drawn_box(png: Path, target, size, info: ModelInfo) -> list[float]:
    """Draw ``target``'s box (in the model input's pixels, ``size``) on the overlay ``png``;
    the box in the image's pixels."""
    from PIL import Image

    from xcam.viz import draw_box, save_png

    with Image.open(png) as img:
        shown = draw_box(img, target.box, info.class_name(target.label), size=size)
    save_png(shown, png)
    sy, sx = shown.height / size[0], shown.width / size[1]
    x1, y1, x2, y2 = target.box
    return [round(v, 2) for v in (x1 * sx, y1 * sy, x2 * sx, y2 * sy)]


def _write_outputs(
    out: Path, stem: str, image, cam: torch.Tensor, attribution: bool, alpha, colormap
) -> str:
    """Write ``<stem>.npy`` and ``<stem>.png`` at the image's size, a strip of rows at a
    time (a 6000² image costs ~4 bytes a pixel, not a full-size float copy of each step);
    ``image`` is drawn over. ``attribution``: ``cam`` is an input-shaped ``[C, H, W]``
    attribution (Guided Backprop), not a heatmap. Returns the kind."""
    from xcam.viz import attribution_into, overlay_into, save_png, save_resized

    save_resized(cam, (image.height, image.width), out / f"{stem}.npy", clamp=not attribution)
    if attribution:
        save_png(attribution_into(image, cam), out / f"{stem}.png")
        return "attribution"
    save_png(overlay_into(image, cam, alpha=alpha, colormap=colormap), out / f"{stem}.png")
    return "heatmap"
