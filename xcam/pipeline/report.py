"""A job's ``report.html``: its overlays as a gallery that reads offline, no server.

Each card: the overlay (linking to its map), the top-1 prediction and its probability, the
class explained and its score, and with labels the label and whether the prediction was
right; the page sorts by score and filters by class and by right / wrong (plain HTML and
JavaScript, ``report.html`` beside this module). Written from the record a row at a time,
with links relative to the folder, so the folder can be moved or shared whole.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from xcam.core.files import atomic
from xcam.pipeline.batch import class_name
from xcam.record import Record, _clean

REPORT = "report.html"


def write_report(
    record: Record, model: str, method: str, classes: Sequence[str] | None = None
) -> Path:
    """``report.html`` in the record's folder, from its rows (atomically)."""
    from importlib.resources import files

    page = files("xcam.pipeline").joinpath("report.html").read_text(encoding="utf-8")
    head, tail = page.split("/*ROWS*/")
    meta = {"model": Path(model).name, "method": method}
    tail = tail.replace("/*META*/", _script_json(meta))
    path = record.out / REPORT
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(head + "[")
        rows = (card for row in record.items.rows() for card in cards(row, classes))
        errors = (_failed(row) for row in record.errors.rows())
        for n, card in enumerate(itertools.chain(rows, errors)):
            f.write(("," if n else "") + "\n" + _script_json(card))
        f.write("\n]" + tail)
    return path


def cards(row: dict[str, Any], classes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """An explained image's cards: one, or with ``--class present`` / ``boxes`` one per
    label present or box found."""
    preds = [p for p in row.get("predictions") or [] if "name" in p]
    top = preds[0] if preds else {}
    label = row.get("label")
    base = {
        "image": Path(row.get("image", "")).name,
        "predicted": top.get("name"),
        "probability": top.get("probability"),
        "label": label,
        "label_name": None if label is None else _name(classes, label, row),
        "correct": row.get("correct"),
        "error": None,
    }
    entries = row.get("labels", row.get("boxes", [row]))
    return [
        {
            **base,
            "target_name": e.get("target_name", row.get("target_name")),
            "score": e.get("score", row.get("score")),
            "overlay": _href(e.get("overlay")),
            "map": _href(e.get("map")),
        }
        for e in entries
    ]


def _failed(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": Path(row.get("image", "")).name,
        "error": row.get("error"),
        "predicted": None,
        "probability": None,
        "label": None,
        "label_name": None,
        "correct": None,
        "target_name": None,
        "score": None,
        "overlay": None,
        "map": None,
    }


def _name(classes: Sequence[str] | None, label: int, row: dict[str, Any]) -> str:
    """A label's class name: as the row's predictions name it (a single-logit head's
    ``positive`` / ``negative``), else as :func:`~xcam.pipeline.batch.class_name` does."""
    named = {p.get("class"): p.get("name") for p in row.get("predictions") or []}
    return named.get(label) or class_name(classes, label)


def _href(name: str | None) -> str | None:
    """A file of the folder as a relative link (any character a URL can't hold escaped)."""
    if name is None:
        return None
    return quote(name.encode("utf-8", "surrogateescape"))


def _script_json(value: Any) -> str:
    """JSON that can't end the ``<script>`` holding it."""
    text = json.dumps(_clean(value), allow_nan=False, default=str)
    return text.replace("<", "\\u003c")  # no "</script>" or "<!--": still valid JSON
