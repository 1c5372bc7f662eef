"""The Ray engine: a job's batches as a Ray Data pipeline.

``map_batches`` with an actor class (:class:`Worker`) that holds one explainer (a torch
model, or an ONNX Runtime session for an in-graph file: then the worker imports numpy and
onnxruntime, never torch) and runs :func:`xcam.pipeline.job.explain_batch` on each batch:
decode, explain, write the maps and overlays. The rows go out through Ray's Parquet writer
into the output folder (``.xcam-parts``), and the driver reads them into the job's record.

Ray retries a batch whose worker died (the actor is restarted); a batch's rows exist only
once it returned, and its files are written atomically, so every image is explained exactly
once. Scheduling, retries and back-pressure are Ray's: xcam writes no scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import ray

from xcam.core.errors import XCamError
from xcam.pipeline.batch import BatchExplainer, output_names
from xcam.pipeline.job import PARTS, JobOptions, Progress, explain_batch, ingest_parts
from xcam.pipeline.sources import Item
from xcam.record import Record, _clean

# tries of a batch whose worker dies: a worker killed once is retried; a batch that kills
# every worker it reaches is tried image by image, and the image that does (one too large
# for memory, say) becomes an error row after as many tries
RETRIES = 2


def ray_reason(e: BaseException) -> str:
    """The innermost cause of a Ray error: what the worker's code raised."""
    while e.__cause__ is not None and e.__cause__ is not e:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"


class Worker:
    """A Ray Data actor: one explainer, built once per worker by ``factory``. Ray restarts a
    worker that died and gives it the batch again; the tries are counted in the output
    folder, so an image that kills every worker it reaches ends as an error row after
    ``RETRIES`` tries instead of being retried forever."""

    def __init__(self, factory: Callable[[], BatchExplainer], out: str, options: JobOptions):
        self.explainer = factory()
        self.out, self.options = Path(out), options

    def _attempt(self, keys: list[str], done: bool = False) -> int:
        """This batch's try, counted (1 the first time); ``done``: it came through, forget
        its tries."""
        import hashlib

        folder = self.out / PARTS / "tries"
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1("\n".join(keys).encode("utf-8", "surrogateescape")).hexdigest()
        mark = folder / name
        if done:
            mark.unlink(missing_ok=True)
            return 0
        tries = int(mark.read_text() or 0) + 1 if mark.exists() else 1
        mark.write_text(str(tries))
        return tries

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            Item(Path(str(p)), json.loads(str(label)))
            for p, label in zip(batch["path"], batch["label"], strict=True)
        ]
        keys = [str(k) for k in batch["key"]]
        stems = {k: str(s) for k, s in zip(keys, batch["stem"], strict=True)}
        if self._attempt(keys) <= RETRIES:
            rows = explain_batch(self.explainer, items, keys, stems, self.out, self.options)
        else:  # each try killed its worker: the images one by one, to find which does
            rows = []
            for item, key in zip(items, keys, strict=True):
                if self._attempt([key]) > RETRIES:
                    why = f"a Ray worker died on each of {RETRIES} tries at this image"
                    rows.append(
                        {"key": key, "image": str(item.path), "error": f"{item.path}: {why}"}
                    )
                    continue
                rows += explain_batch(self.explainer, [item], [key], stems, self.out, self.options)
                self._attempt([key], done=True)
        return {
            "key": np.array([r["key"] for r in rows], dtype=object),
            "row": np.array([json.dumps(_clean(r)) for r in rows], dtype=object),
        }


def ray_engine(
    factory: Callable[[], BatchExplainer],
    *,
    concurrency: int = 2,
    address: str | None = None,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
):
    """An engine for :func:`xcam.pipeline.job.run_job`: ``concurrency`` Ray actors, each
    with ``num_cpus`` CPUs and ``num_gpus`` GPUs and its own explainer from ``factory``. A
    Ray already initialised in this process is used as it is; otherwise ``ray.init`` starts
    a local cluster (or joins ``address``) and shuts it down after the job."""

    def engine(
        explainer: BatchExplainer,
        todo: Sequence[Item],
        record: Record,
        stems: Mapping[str, str],
        options: JobOptions,
        on_progress: Progress | None = None,
    ) -> None:
        if getattr(explainer, "per_label", False):
            raise XCamError(
                "--class present and --class boxes run on the local engine only; leave out "
                "--engine ray"
            )
        if not todo:
            return
        from xcam.record import image_key

        rows = []
        for it in todo:
            key = image_key(it.path)
            rows.append(  # absolute paths: a worker may run elsewhere, in another folder
                {
                    "key": key,
                    "path": str(it.path.absolute()),
                    "stem": stems[key],
                    "label": json.dumps(it.label),
                }
            )
            record.claim(output_names(f"{stems[key]}_{explainer.name}", options.overlays))
        out = str(record.out.absolute())
        own = not ray.is_initialized()
        if own:
            ray.init(address=address, include_dashboard=False, logging_level="warning")
        try:
            blocks = max(1, min(len(rows), len(rows) // max(options.batch_size, 1)))
            ds = ray.data.from_items(rows, override_num_blocks=blocks)
            ds = ds.map_batches(
                Worker,
                fn_constructor_kwargs={
                    "factory": factory,
                    "out": out,
                    "options": options,
                },
                batch_size=options.batch_size,
                batch_format="numpy",
                concurrency=concurrency,
                num_cpus=num_cpus,
                num_gpus=num_gpus or None,
            )  # Ray Data's actors are restarted, and their batches retried, by default
            ds.write_parquet(str(record.out.absolute() / PARTS))
        except Exception as e:  # Ray wraps what a worker raised: say that, in one line
            raise XCamError(f"the Ray job failed: {ray_reason(e)}") from e
        finally:
            if own:
                ray.shutdown()
            done = ingest_parts(record)
            if on_progress is not None and done:
                on_progress(done)

    return engine


__all__ = ["Worker", "ray_engine"]
