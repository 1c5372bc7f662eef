"""A dataset job in its output folder: the run, what to skip on resume, and the local engine.

The local engine streams::

    items ─► decode threads ─► model on batches (this thread) ─► a writer thread ─► record
             (bounded: a few batches ahead)                       (bounded queue)

so memory holds a few batches of images whatever the dataset's size; what the job knows
per image is on disk (:mod:`xcam.pipeline.plan`, :mod:`xcam.record`). Rows reach the record
in the items' order, each as soon as its files are written.

Safety of the folder (see :mod:`xcam.record`):

- one job at a time per folder: another gets an :class:`OutputError` (or, with ``wait``,
  waits);
- every option that changes an output is the *run*; a folder holds one run. The same run
  again resumes: images already done are skipped, new ones are added (a run over some of
  the images keeps the others' entries). A different run, or files the record doesn't list,
  are an :class:`OutputError` unless ``overwrite``, which discards the previous run's record
  and files;
- files are written atomically and the record as images finish, so an interrupted job
  leaves whole files and resumes where it stopped.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xcam.core.errors import InputError, OutputError
from xcam.pipeline.batch import BatchExplainer, Explained, decode, output_names, write_item
from xcam.pipeline.plan import Plan
from xcam.pipeline.sources import Item, resolve_label
from xcam.record import SUMMARY, Record, differences, image_key, image_stamp

Progress = Callable[[int], None]


@dataclass
class JobReport:
    """What an explain job wrote and what it could not do."""

    out: Path
    items: Sequence[dict[str, Any]] = field(default_factory=list)  # decoded when read
    errors: list[dict[str, str]] = field(default_factory=list)
    predictions: Path | None = None
    records: Path | None = None  # records.parquet (None without pyarrow)
    report: Path | None = None  # report.html, where asked for
    skipped: int = 0  # images already explained by an earlier, identical run
    seconds: float = 0.0
    overlays: bool = True


@dataclass
class JobOptions:
    """How a job writes (``overlays``, ``alpha``, ``colormap`` change outputs and enter the
    run; the rest is speed)."""

    batch_size: int = 8
    overlays: bool = True
    alpha: float = 0.5
    colormap: str = "jet"
    workers: int = 2  # decode threads (one more thread writes)
    ahead: int = 2  # batches decoded ahead of the model
    report: bool = False  # report.html: the overlays as a gallery (xcam.pipeline.report)

    def run(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "colormap": self.colormap, "overlays": self.overlays}


def run_job(
    explainer: BatchExplainer,
    items: Iterable[Item | Path | str] | Plan,
    out: str | Path,
    options: JobOptions | None = None,
    *,
    engine: Callable[..., None] | None = None,
    on_progress: Progress | None = None,
    overwrite: bool = False,
    wait: bool = False,
    echo: Callable[[str], None] | None = None,
) -> JobReport:
    """Explain ``items`` into ``out``: ``<stem>_<method>.npy`` maps, ``.png`` overlays,
    ``predictions.json``, ``records.parquet`` and with ``options.report`` ``report.html``.
    ``engine(explainer, todo, record, stems, options, on_progress)`` runs the images still
    to do (default: :func:`stream`, threads in this process); it adds one row per image to
    ``record``."""
    from xcam.files import locked_folder
    from xcam.pipeline.table import write_table

    options = options or JobOptions()
    say = echo or (lambda _line: None)
    out = Path(out)
    started = time.perf_counter()
    plan = items if isinstance(items, Plan) else Plan.of(items, say)
    run = {**explainer.settings(), **options.run()}
    with locked_folder(out, wait):
        record = _record_for(out, run, overwrite)
        parts = _read_parts(record, say)  # before the plan: their stems are taken
        _plan(out, record, plan, explainer.name, options.overlays, overwrite, say)
        record.open()
        _remove_parts(parts)  # now in the journal
        report = _resume(record, plan, explainer, say, on_progress)
        complete = False
        try:
            (engine or stream)(explainer, plan.todo, record, plan.stems, options, on_progress)
            complete = True
        finally:
            report.predictions = record.close(_summary(explainer), complete)
            report.records = write_table(record, say)
            if options.report:
                from xcam.pipeline.report import write_report

                model = str(explainer.settings().get("model"))
                report.report = write_report(record, model, explainer.name, explainer.classes)
    _collect(report, record, plan)
    report.overlays = options.overlays
    report.seconds = time.perf_counter() - started
    return report


def stream(
    explainer: BatchExplainer,
    todo: Sequence[Item],
    record: Record,
    stems: Mapping[str, str],
    options: JobOptions,
    on_progress: Progress | None = None,
) -> None:
    """The local engine: ``options.workers`` decode threads ahead of the model, a writer
    thread behind it, both bounded; rows land in ``todo``'s order.

    One writer, in order, so that a failure (a full disk, an interrupt) stops the job where
    it is: the images after it are not written, as in a job without threads."""
    progress = on_progress or (lambda _n: None)
    size = options.batch_size
    chunks = (todo[i : i + size] for i in range(0, len(todo), size))
    stop = threading.Event()

    def write(*args: Any) -> dict[str, Any]:
        if stop.is_set():
            raise _Stopped
        try:
            return write_item(*args)
        except BaseException:
            stop.set()
            raise

    decoders = ThreadPoolExecutor(
        options.workers, thread_name_prefix="xcam-decode", initializer=_yield_to_model
    )
    writer = ThreadPoolExecutor(1, thread_name_prefix="xcam-write", initializer=_yield_to_model)

    def submit(chunk: Sequence[Item]) -> list[tuple[Item, Future]]:
        return [(it, decoders.submit(decode, it.path, explainer)) for it in chunk]

    writes: deque[tuple[dict[str, Any], Future]] = deque()
    try:
        ahead = deque(submit(c) for c in itertools.islice(chunks, options.ahead))
        while ahead:
            decoded = ahead.popleft()
            following = next(chunks, None)
            if following is not None:
                ahead.append(submit(following))
            ready = []
            for item, future in decoded:
                row, loaded = _loaded(item, future, explainer)
                if loaded is None:
                    record.add(row)
                    progress(1)
                else:
                    ready.append((row, *loaded))
            if not ready:
                continue
            if getattr(explainer, "per_label", False):  # --class present / boxes
                explainer.rows(ready, record, stems, options)  # type: ignore[attr-defined]
                progress(len(ready))
                continue
            for (row, image, _x, label), explained in zip(
                ready, explain_ready(explainer, ready), strict=True
            ):
                done, stem = _outcome(row, explained, label, stems, explainer.name)
                if stem is None:
                    record.add(done)
                    progress(1)
                    continue
                record.claim(output_names(stem, options.overlays))
                job = (record.out, stem, image, explained, options.overlays)
                writes.append((done, writer.submit(write, *job, options.alpha, options.colormap)))
            while len(writes) > 2 * size:  # bounded: the model waits for a slow disk
                _land(record, *writes.popleft(), progress)
        while writes:
            _land(record, *writes.popleft(), progress)
    except BaseException:
        stop.set()  # nothing more is written; what was is whole and claimed
        raise
    finally:
        decoders.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)


def _yield_to_model() -> None:
    """Run this thread at a lower priority than the model's (Linux: per thread): where the
    cores are all busy, the model's threads, which wait for each other at every operator,
    are not the ones preempted."""
    import contextlib
    import os

    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: as it was
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class _Stopped(Exception):
    """A write not started because the job stopped."""


def explain_batch(
    explainer: BatchExplainer,
    items: Sequence[Item],
    keys: Sequence[str],
    stems: Mapping[str, str],
    out: Path,
    options: JobOptions,
) -> list[dict[str, Any]]:
    """One batch start to end in this thread (a Ray worker's): decode, explain, write; a row
    per item (``keys``: the driver's keys of the items), its error where it failed."""
    rows, ready = [], []
    for item, key in zip(items, keys, strict=True):
        future: Future = Future()
        try:
            future.set_result(decode(item.path, explainer))
        except Exception as e:  # re-raised by _loaded, which names the file
            future.set_exception(e)
        row, loaded = _loaded(item, future, explainer, key)
        if loaded is None:
            rows.append(row)
        else:
            ready.append((row, *loaded))
    found = explain_ready(explainer, ready) if ready else []
    for (row, image, _x, label), explained in zip(ready, found, strict=True):
        done, stem = _outcome(row, explained, label, stems, explainer.name)
        if stem is not None:
            job = (out, stem, image, explained, options.overlays, options.alpha, options.colormap)
            done = {**done, **write_item(*job)}
        rows.append(done)
    return rows


def _outcome(
    row: dict[str, Any],
    explained: Explained | str,
    label: int | None,
    stems: Mapping[str, str],
    method: str,
) -> tuple[dict[str, Any], str | None]:
    """What one explained image becomes (both engines): its error row and None (a label
    the model refused), or its row without files and the stem of its output files."""
    if isinstance(explained, str):
        return {"key": row["key"], "image": row["image"], "error": explained}, None
    stem = stems[row["key"]]
    return finish_row({**row, "stem": stem}, explained, label), f"{stem}_{method}"


def _loaded(item: Item, future: Future, explainer: BatchExplainer, key: str | None = None):
    """An item's row head and its decoded image, input and label; or its error row."""
    key = key or image_key(item.path)
    row: dict[str, Any] = {"key": key, "image": str(item.path)}
    try:
        image, stamp, x = future.result()
        label = None if item.label is None else label_of(item.label, explainer)
    except InputError as e:
        return {**row, "error": str(e)}, None
    except OSError as e:
        return {**row, "error": f"{item.path}: {e.strerror or e}"}, None
    return {"key": key, "stamp": stamp, "image": str(item.path)}, (image, x, label)


def label_of(label: Any, explainer: BatchExplainer) -> int:
    """A label as written (an index, a class name) as ``explainer``'s class index; an
    :class:`InputError` naming it where the model has no such class."""
    return resolve_label(label, explainer.classes, getattr(explainer, "num_classes", None))


def explain_ready(explainer: BatchExplainer, ready: Sequence) -> list[Explained | str]:
    """The explainer on the batch ``ready`` (rows, images, inputs, labels): the images with
    a label and those without in a call each. A label the model refuses (a class it hasn't)
    is that image's error (a string); a model that overflows (NaN) fails the job with its
    :class:`NumericalError`: that is the model's fault, not an image's."""
    import numpy as np

    from xcam.core.errors import TargetError

    labelled = [i for i, r in enumerate(ready) if r[3] is not None]
    bare = [i for i, r in enumerate(ready) if r[3] is None]
    found: dict[int, Explained | str] = {}
    for group, with_labels in ((bare, False), (labelled, True)):
        if not group:
            continue
        x = np.stack([ready[i][2] for i in group])
        labels = [ready[i][3] for i in group] if with_labels else None
        try:
            found.update(zip(group, explainer(x, labels), strict=True))
        except TargetError as e:
            if not with_labels:
                raise
            if len(group) == 1:
                found[group[0]] = f"{ready[group[0]][0]['image']}: {e}"
            else:  # which label? each image alone says
                for i in group:
                    found[i] = explain_ready(explainer, [ready[i]])[0]
    return [found[i] for i in range(len(ready))]


def finish_row(row: dict[str, Any], explained: Explained, label: int | None) -> dict[str, Any]:
    """An image's row without its files: what the explainer found, and with a label, the
    label and whether the top prediction is it."""
    full = {**row, **explained.fields}
    if label is not None:
        full["label"] = label
        preds = explained.fields.get("predictions") or [{}]
        top = preds[0]
        if "probability" in top and top.get("name") == "positive":  # one logit: the decision
            full["correct"] = int(top["probability"] >= 0.5) == label
        else:
            full["correct"] = top.get("class") == label
    return full


def _land(record: Record, row: dict[str, Any], task: Future, progress: Progress) -> None:
    """A written image's row, its files named, into the record."""
    files = task.result()  # an OSError (a full disk) fails the job: nothing half-recorded
    record.add({**row, **files})
    progress(1)


# where the Ray engine's workers leave their rows (Ray's Parquet writer); read into the
# record when the job ends, or by the next run after an interrupt
PARTS = ".xcam-parts"


def _read_parts(record: Record, say: Callable[[str], None] | None = None) -> Path | None:
    """Rows the Ray engine's workers wrote to ``PARTS`` into ``record`` (each image's last
    row wins); a torn part (a kill mid-write) is skipped: its images run again. Returns
    the folder, to remove once the rows are in the journal."""
    import json

    folder = record.out / PARTS
    if not folder.is_dir():
        return None
    count = 0
    for part in sorted(folder.rglob("*.parquet")):
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(part, columns=["row"]).column("row").to_pylist()
        except Exception:  # a torn or foreign file: those images are simply not done
            continue
        for text in rows:
            row = json.loads(text)
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                record.add(row)
                count += 1
    if count and say is not None:
        say(f"read {count} row(s) written by Ray workers")
    return folder


def _remove_parts(folder: Path | None) -> None:
    import shutil

    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def ingest_parts(record: Record) -> int:
    """:func:`_read_parts` then the parts removed (the Ray engine, at the end of its run);
    how many rows came in."""
    before = len(record.items) + len(record.errors)
    _remove_parts(_read_parts(record))
    return len(record.items) + len(record.errors) - before


def _plan(
    out: Path,
    record: Record,
    plan: Plan,
    method_name: str,
    overlays: bool,
    overwrite: bool,
    say: Callable[[str], None],
) -> None:
    """The images to explain (not this run's own outputs, e.g. with ``-o .`` beside the
    images) and every image's stem: the record's for images it knows, a new unique one for
    the rest. Files the new stems would replace that the record doesn't list are refused."""
    if plan.drop_outputs(out, record.owned):
        say(f"note: skipped this run's own outputs in {out}")
    plan.assign_stems(record.items)
    _refuse_foreign(out, record, plan.fresh_names(method_name, overlays), overwrite)


def _resume(
    record: Record,
    plan: Plan,
    explainer: BatchExplainer,
    say: Callable[[str], None],
    on_progress,
) -> JobReport:
    """Mark the images still to explain and make the job's report; images an earlier run
    of the same settings finished (the same file, the same label) are skipped, said and
    counted as progress."""
    skipped = plan.mark_todo(lambda key, item: _done(record, key, item, explainer))
    report = JobReport(record.out, skipped=skipped)
    if skipped:
        say(f"resuming: {skipped} of {len(plan)} image(s) already explained")
        if on_progress is not None:  # a progress object's ``skip`` keeps its rate true
            owner = getattr(on_progress, "__self__", None)
            getattr(owner, "skip", on_progress)(skipped)
    return report


def _summary(explainer: BatchExplainer) -> dict[str, Any]:
    """What ``predictions.json`` says of the job beside its images."""
    settings = explainer.settings()
    return {
        "model": settings.get("model"),
        "method": explainer.name,
        "layers": settings.get("layers"),
        "input_size": list(explainer.input_size),
    }


def _collect(report: JobReport, record: Record, plan: Plan) -> None:
    """Fill ``report`` with the record's items and errors of this job's images (the record
    may hold other images of the same run); its items are read from disk when used."""
    report.items = record.items.select(plan.__contains__)
    report.errors = [
        {"image": e["image"], "error": e["error"]} for e in record.errors.rows() if e["key"] in plan
    ]


def _done(record: Record, key: str, item: Item, explainer: BatchExplainer) -> bool:
    try:
        row = record.finished(key, image_stamp(item.path))
    except OSError:
        return False
    if row is None:
        return False
    try:
        label = None if item.label is None else label_of(item.label, explainer)
    except InputError:
        return False  # its label is wrong now: explained again, to say so
    return row.get("label") == label


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
        _remove_parts(out / PARTS)
        return Record(out, run)  # a run that ended before its first image: nothing to lose
    if old is not None:
        if not overwrite:
            diff = "; ".join(differences(old.run, run))
            raise OutputError(
                f"{out} holds the outputs of a different run ({diff}); pass --overwrite "
                "(overwrite=True) to replace them, or choose another --out"
            )
        for name in old.owned:
            (out / name).unlink(missing_ok=True)
        _remove_parts(out / PARTS)  # rows of the replaced run
    elif (out / SUMMARY).exists() and not overwrite:  # a record without its journal
        raise OutputError(
            f"{out} already holds a {SUMMARY} written by a different run or by something "
            "else; pass --overwrite (overwrite=True) to replace it, or choose another --out"
        )
    _remove_parts(out / PARTS)  # left without a journal: no run of ours to resume
    return Record(out, run)


def _refuse_foreign(out: Path, record: Record, names: Iterable[str], overwrite: bool) -> None:
    """Files this run would write that its record doesn't list are someone else's."""
    if overwrite:
        return
    foreign = (n for n in names if n not in record.owned and (out / n).exists())
    first = next(foreign, None)
    if first is not None:
        count = 1 + sum(1 for _ in foreign)
        raise OutputError(
            f"{out} already holds {count} file(s) this run would replace (e.g. "
            f"{first}), written by a different run or by something else; pass --overwrite "
            "(overwrite=True) to replace them, or choose another --out"
        )
