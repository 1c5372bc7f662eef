"""What a dataset job explains: image files from folders (recursive), globs and manifests.

A *manifest* is a CSV or Parquet table with a column of image paths (``path`` unless told
otherwise; relative paths are read from the manifest's folder) and, optionally, a column of
labels: class indices or class names, the class a job explains with ``target_column``
instead of the prediction.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xcam.core.decision import BINARY
from xcam.core.errors import InputError
from xcam.images import IMAGE_SUFFIXES
from xcam.record import JOURNAL

MANIFEST_SUFFIXES = {".csv", ".parquet"}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Item:
    """One image to explain and, from a manifest's label column, its label as written."""

    path: Path
    label: Any = None


def find_items(
    specs: Iterable[str | Path],
    path_column: str = "path",
    target_column: str | None = None,
    echo=None,
) -> list[Item]:
    """:func:`iter_items` as a list."""
    return list(iter_items(specs, path_column, target_column, echo))


def iter_items(
    specs: Iterable[str | Path],
    path_column: str = "path",
    target_column: str | None = None,
    echo=None,
) -> Iterator[Item]:
    """The images ``specs`` name, in order, as they are found: an image file as it is, a
    folder's images (recursive, sorted; a folder holding an xcam job's record is skipped:
    those are outputs), a glob's matches (``**`` recurses), a manifest's rows.
    ``target_column`` (a manifest's label column) may only be given with manifests."""
    say = echo or (lambda _line: None)
    specs = list(specs)
    if target_column is not None and not any(
        Path(str(s)).suffix.lower() in MANIFEST_SUFFIXES for s in specs
    ):
        raise InputError(
            f"target column {target_column!r} is for a manifest (a .csv or .parquet with a "
            "path column); none was given"
        )
    for spec in specs:
        text = str(spec)
        p = Path(text)
        if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
            yield from read_manifest(p, path_column, target_column)
        elif p.is_dir():
            yield from (Item(f) for f in _walk(p, say))
        elif _GLOB_CHARS & set(text) and not p.exists():
            found = n = 0
            for m in map(Path, sorted(glob.glob(text, recursive=True))):
                if _is_image(m):
                    n += 1
                    if not _in_outputs(m):
                        found += 1
                        yield Item(m)
            if found < n:
                say(f"note: {text}: skipped the outputs of an earlier xcam job it matches")
            if not found:
                say(f"note: no images match {text}")
        else:
            yield Item(p)  # a file, or a missing one: reported as that image's error


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _in_outputs(p: Path) -> bool:
    """Whether ``p`` lies in an xcam job's output folder (one holding its record)."""
    return (p.parent / JOURNAL).exists()


def _walk(root: Path, say) -> Iterator[Path]:
    """The image files under ``root``, sorted by path, a folder at a time; hidden folders
    and folders holding an xcam job's record (its outputs) are not entered; links to folders
    are not followed."""

    def unreadable(e: OSError) -> None:
        say(f"note: skipped {e.filename}: {e.strerror or e}")

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        here = Path(folder)
        if here != root and JOURNAL in files:
            say(f"note: skipped {here}: it holds the outputs of an xcam job")
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (here / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES)


def read_manifest(
    path: Path, path_column: str = "path", target_column: str | None = None
) -> list[Item]:
    """The rows of a CSV or Parquet manifest as items; a missing column is an
    :class:`InputError` naming the columns there are."""
    columns = _read_table(path)
    if not columns:
        raise InputError(f"{path}: an empty manifest (no header, no columns)")
    for name, what in ((path_column, "path"), (target_column, "target")):
        if name is not None and name not in columns:
            raise InputError(
                f"{path}: no {what} column {name!r}; its columns are "
                + ", ".join(map(repr, columns))
            )
    base = path.parent
    paths = columns[path_column]
    labels = columns[target_column] if target_column is not None else [None] * len(paths)
    items = []
    first = 2 if path.suffix.lower() == ".csv" else 1  # a CSV's line 1 is its header
    for row, (p, label) in enumerate(zip(paths, labels, strict=True), start=first):
        if p is None or not str(p).strip():
            what = "line" if first == 2 else "row"
            raise InputError(f"{path}: {what} {row} has no {path_column!r}")
        p = Path(str(p).strip())
        items.append(Item(p if p.is_absolute() else base / p, parse_label(label)))
    return items


def parse_label(value: Any) -> Any:
    """A label as the manifest holds it: an int where it reads as one, else the text (a
    class name, resolved by the job), None where the cell is empty."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)  # "3.0", as a spreadsheet writes an integer
    except ValueError:
        return text
    return int(number) if number.is_integer() else text


def _read_table(path: Path) -> dict[str, list[Any]]:
    """A manifest's columns by name."""
    if path.suffix.lower() == ".csv":
        import csv

        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                names = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"{path}: not a readable CSV manifest ({e})") from None
        return {n: [r.get(n) for r in rows] for n in names}
    pq = _parquet(f"{path} is a Parquet manifest")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's errors have no common base of their own
        raise InputError(f"{path}: not a readable Parquet manifest ({e})") from None
    return table.to_pydict()


def _parquet(why: str):
    """pyarrow's Parquet module, or an InputError saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"{why}: Parquet needs pyarrow (pip install 'xcam-deploy[data]')"
        ) from None
    return pq


def resolve_label(label: Any, classes: Sequence[str] | None, k: int | None) -> int:
    """A manifest label as a class index: an index in range, or one of ``classes``'
    names; anything else is an :class:`InputError` naming it."""
    if k == 1 and isinstance(label, str) and label.lower() in BINARY:
        return BINARY[label.lower()]
    if isinstance(label, int):
        if k == 1 and label not in (0, 1):
            raise InputError(
                f"label {label}: a single-logit head's labels are 1 (positive) or 0 (negative)"
            )
        if k is not None and k > 1 and not 0 <= label < k:
            raise InputError(f"label {label} is out of range for {k} classes (0..{k - 1})")
        return label
    if classes is not None and label in classes:
        return list(classes).index(label)
    message = f"label {label!r} is neither a class index nor one of the model's class names"
    if classes:
        import difflib

        names = {str(c).lower(): str(c) for c in classes}
        near = difflib.get_close_matches(str(label).lower(), names, n=1, cutoff=0.75)
        if near:
            message += f": did you mean {names[near[0]]!r}?"
        else:
            shown = ", ".join(map(str, list(classes)[:10]))
            message += f" (the classes: {shown}{', …' if len(classes) > 10 else ''})"
    raise InputError(message)
