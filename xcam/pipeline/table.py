"""A job's records as a table: ``records.parquet`` beside ``predictions.json`` (pyarrow).

One row per image, explained or failed::

    image, stem, error, target, target_name, score, label, correct, top_classes,
    top_names, top_probabilities, map, overlay, kind, degenerate, peak_row, peak_col,
    top10_mass, entries

``entries`` holds, as JSON, the per-label or per-box maps of ``--class present`` /
``boxes``. Written atomically at the end of a job (also an interrupted one), from the
record, so it always agrees with ``predictions.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xcam.core.files import atomic
from xcam.record import Record

TABLE = "records.parquet"
CHUNK = 256  # rows per row group


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.string()),
            ("stem", pa.string()),
            ("error", pa.string()),
            ("target", pa.int64()),
            ("target_name", pa.string()),
            ("score", pa.float64()),
            ("label", pa.int64()),
            ("correct", pa.bool_()),
            ("top_classes", pa.list_(pa.int64())),
            ("top_names", pa.list_(pa.string())),
            ("top_probabilities", pa.list_(pa.float64())),
            ("map", pa.string()),
            ("overlay", pa.string()),
            ("kind", pa.string()),
            ("degenerate", pa.bool_()),
            ("peak_row", pa.int64()),
            ("peak_col", pa.int64()),
            ("top10_mass", pa.float64()),
            ("entries", pa.string()),
        ]
    )


def _text(value: Any) -> Any:
    """A string Parquet can hold: a file name's undecodable bytes (kept by Python as
    surrogates) written as ``\\xNN``."""
    if not isinstance(value, str):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A record row (:mod:`xcam.record`) as a table row."""
    preds = [p for p in row.get("predictions") or [] if "class" in p]
    target = row.get("target")
    peak = row.get("peak") or [None, None]
    entries = row.get("labels", row.get("boxes"))
    return {
        "image": _text(row.get("image")),
        "stem": _text(row.get("stem")),
        "error": _text(row.get("error")),
        "target": target if isinstance(target, int) else None,
        "target_name": row.get("target_name"),
        "score": row.get("score"),
        "label": row.get("label"),
        "correct": row.get("correct"),
        "top_classes": [p["class"] for p in preds] if preds else None,
        "top_names": [p["name"] for p in preds] if preds else None,
        "top_probabilities": [p.get("probability", p.get("pixels")) for p in preds]
        if preds
        else None,
        "map": _text(row.get("map")),
        "overlay": _text(row.get("overlay")),
        "kind": row.get("kind"),
        "degenerate": row.get("degenerate"),
        "peak_row": peak[0],
        "peak_col": peak[1],
        "top10_mass": row.get("top10_mass"),
        "entries": None if entries is None else json.dumps(entries),
    }


def write_table(record: Record, say: Callable[[str], None] | None = None) -> Path | None:
    """``records.parquet`` from ``record``'s rows; None (and a note) without pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        if say is not None:
            say(f"note: {TABLE} not written: it needs pyarrow (pip install 'xcam-deploy[data]')")
        return None
    import itertools

    rows = itertools.chain(record.items.rows(), record.errors.rows())
    schema = _schema()
    path = record.out / TABLE
    # a row group at a time: a dataset's table is never held whole in memory
    with atomic(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        while chunk := [table_row(r) for r in itertools.islice(rows, CHUNK)]:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
        if not (record.items or record.errors):
            writer.write_table(schema.empty_table())
    return path
