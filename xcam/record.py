"""The record of an explain job in its output folder.

``predictions.jsonl`` is a journal: its first line is the run (every option that changes an
output), then one line per image as soon as that image's files are written, or per image
that failed. ``predictions.json`` is rendered from it at the end of a run, also after an
interrupt (``"complete": false``). Because the journal survives an interrupt, the same
command run again resumes: images already done (same file, same size and modification
time, both outputs present) are skipped.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from xcam.core.files import atomic

JOURNAL = "predictions.jsonl"
SUMMARY = "predictions.json"


def image_key(path: Path) -> str:
    """The journal's key of an image: its real absolute path (links resolved, so one file
    reached two ways is one image)."""
    return os.path.realpath(path)


def image_stamp(path: Path) -> list[int]:
    """What says an image file is unchanged since it was explained: size and mtime (ns)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _clean(value: Any) -> Any:
    """JSON without NaN or Infinity (strict parsers reject them): such numbers become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each option that differs between two runs."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {str(old.get(key))[:60]} -> {str(new.get(key))[:60]}")
    return out


class Rows(MutableMapping):
    """Rows by image key, each held as compact JSON and decoded when read: a dataset's
    record costs under a kilobyte an image in memory, not the ~3 KB of its dicts (a read
    returns a copy: change a row by setting it again)."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> dict[str, Any]:
        return json.loads(self._data[key])

    def __setitem__(self, key: str, row: dict[str, Any]) -> None:
        self._data[key] = json.dumps(row, separators=(",", ":")).encode("ascii")

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class RowList(Sequence):
    """Some of a :class:`Rows`' rows, in order, decoded when read (a job's report)."""

    def __init__(self, rows: Rows, keys: list[str]) -> None:
        self._rows, self._keys = rows, keys

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._rows[k] for k in self._keys[i]]
        return self._rows[self._keys[i]]

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"RowList({len(self)} rows)"


@dataclass
class Record:
    """A job's journal: the run, and per image (by :func:`image_key`) its entry or error."""

    out: Path
    run: dict[str, Any]
    items: Rows = field(default_factory=Rows)
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # every output file name this run has claimed, finished or not: its own to replace
    owned: set[str] = field(default_factory=set)
    _journal: IO[str] | None = None

    @classmethod
    def read(cls, out: Path) -> Record | None:
        """The record in ``out``, or None if there is none; ValueError if it can't be read.
        A torn last line (a kill mid-write) and lines xcam would not write are ignored."""
        path = out / JOURNAL
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} can't be read ({e})") from None
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        if not rows or not isinstance(rows[0], dict) or not isinstance(rows[0].get("run"), dict):
            raise ValueError(f"{path} is not a record xcam wrote (no run on its first line)")
        record = cls(out, rows[0]["run"])
        for row in rows[1:]:
            if not isinstance(row, dict):
                continue
            if isinstance(row.get("files"), list):
                record.owned.update(n for n in row["files"] if _plain_name(n))
            elif isinstance(row.get("key"), str) and _sane(row):
                record._apply(row)
        return record

    def _apply(self, row: dict[str, Any]) -> None:
        key = row["key"]
        if "error" in row:
            self.items.pop(key, None)  # its old files stay owned (replaced or removed later)
            self.errors[key] = row
        else:
            self.errors.pop(key, None)
            self.items[key] = row
            self.owned.update(_files_of(row))

    def files(self) -> list[str]:
        """The output files this record owns (listed by an image, or claimed before writing)."""
        return sorted(self.owned)

    def claim(self, names: list[str]) -> None:
        """Record ``names`` as this run's before writing them: an interrupt between two
        files leaves nothing the next run would take for someone else's."""
        new = [n for n in names if n not in self.owned]
        if new:
            self.owned.update(new)
            self._write({"files": new})

    def done(self, key: str, stamp: list[int]) -> bool:
        """Whether the image ``key`` was explained in this run from an identical file."""
        item = self.items.get(key)
        return (
            item is not None
            and item.get("stamp") == stamp
            and all((self.out / name).is_file() for name in _files_of(item))
        )

    def open(self) -> None:
        """(Re)write the journal, the run and what it holds, then keep it open to append."""
        rows = [{"run": self.run}, {"files": sorted(self.owned)}]
        with atomic(self.out / JOURNAL) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in itertools.chain(rows, self.items.values(), self.errors.values()):
                f.write(json.dumps(_clean(row)) + "\n")
        self._journal = open(self.out / JOURNAL, "a", encoding="utf-8")  # noqa: SIM115

    def add(self, row: dict[str, Any]) -> None:
        """One image done (or failed): in memory and, flushed at once, in the journal."""
        self._apply(row)
        self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps(_clean(row)) + "\n")
            self._journal.flush()

    def close(self, payload: dict[str, Any], complete: bool) -> Path:
        """Close the journal and write ``predictions.json`` (atomically)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        head = {**payload, "run": self.run, "complete": complete}
        path = self.out / SUMMARY
        # written a row at a time: a dataset's summary is never held whole in memory
        with atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(_clean(head), indent=2, allow_nan=False)[:-2])
            for name, rows in (("images", self.items.values()), ("errors", self.errors.values())):
                f.write(f',\n  "{name}": [')
                for n, row in enumerate(rows):
                    text = json.dumps(_clean(_public(row)), indent=2, allow_nan=False)
                    f.write(("," if n else "") + "\n    " + text.replace("\n", "\n    "))
                f.write("\n  ]" if rows else "]")
            f.write("\n}\n")
        return path


def _plain_name(value: object) -> bool:
    """A file name inside the folder: no separator, not ``.`` or ``..``."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and Path(value).name == value
        and "\\" not in value
    )


def _sane(row: dict[str, Any]) -> bool:
    """A journal line xcam could have written: names it lists stay inside the folder (a
    hand-edited or hostile journal never makes a run write or delete elsewhere)."""
    if "error" in row:
        return isinstance(row.get("image"), str)
    entries = _entries(row)
    return (
        _plain_name(row.get("stem"))
        and isinstance(entries, list)
        and all(
            isinstance(e, dict)
            and (e.get("overlay") is None or _plain_name(e.get("overlay")))
            and _plain_name(e.get("map"))
            for e in entries
        )
    )


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("key", "stamp")}


def _entries(row: dict[str, Any]) -> Any:
    """What of an image's row lists files: the row itself, or one entry per label present
    (``--class present``) or per box found (``--class boxes``)."""
    return row.get("labels", row.get("boxes", [row]))


def _files_of(item: dict[str, Any]) -> list[str]:
    """The files an image's row lists: its overlay (None with overlays off) and map, or with
    ``--class present`` / ``boxes`` those of each label present or box found."""
    return [e[k] for e in _entries(item) for k in ("overlay", "map") if e.get(k) is not None]
