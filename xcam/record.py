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
import sqlite3
from collections.abc import Callable, Iterable, Iterator, MutableMapping, MutableSet, Sequence
from contextlib import contextmanager
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


def scratch() -> sqlite3.Connection:
    """A private temporary SQLite database on disk, deleted when closed: where a dataset
    job keeps what it knows per image, so that memory holds SQLite's page cache (a few MB)
    however many images there are. Shared by threads (SQLite serialises them)."""
    db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")  # scratch: nothing to roll back or to keep
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1024")  # KiB: what it keeps of the database in memory
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Many changes to a :func:`scratch` database as one (fast). Without a journal there is
    no rolling back: on an error the changes made stay (a scratch database is then dropped
    with its job)."""
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


def blob(text: str) -> bytes:
    """A path or name as SQLite stores it: its bytes (names that aren't UTF-8 stay as they are)."""
    return text.encode("utf-8", "surrogateescape")


def unblob(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class Rows(MutableMapping):
    """Rows by image key in a table of a :func:`scratch` database, in the order first set,
    each held as compact JSON and decoded when read (a read returns a copy: change a row by
    setting it again). A row's ``stem`` is indexed: :meth:`has_stem`, :meth:`stem_of`."""

    def __init__(self, db: sqlite3.Connection, table: str) -> None:
        self._db, self._t = db, table
        db.execute(f"CREATE TABLE {table} (key BLOB PRIMARY KEY, stem BLOB, row TEXT NOT NULL)")
        db.execute(f"CREATE INDEX {table}_stem ON {table} (stem)")

    def __getitem__(self, key: str) -> dict[str, Any]:
        got = self._db.execute(f"SELECT row FROM {self._t} WHERE key = ?", (blob(key),))
        found = got.fetchone()
        if found is None:
            raise KeyError(key)
        return json.loads(found[0])

    def __setitem__(self, key: str, row: dict[str, Any]) -> None:
        stem = row.get("stem")
        self._db.execute(
            f"INSERT INTO {self._t} VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
            "SET stem = excluded.stem, row = excluded.row",  # keeps the row's place
            (
                blob(key),
                blob(stem) if isinstance(stem, str) else None,
                json.dumps(row, separators=(",", ":")),
            ),
        )

    def __delitem__(self, key: str) -> None:
        if not self._db.execute(f"DELETE FROM {self._t} WHERE key = ?", (blob(key),)).rowcount:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._one("key", blob(key))

    def __iter__(self) -> Iterator[str]:
        for (key,) in self._db.execute(f"SELECT key FROM {self._t} ORDER BY rowid"):
            yield unblob(key)

    def __len__(self) -> int:
        return self._db.execute(f"SELECT COUNT(*) FROM {self._t}").fetchone()[0]

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every row, in order (one query, not one a row)."""
        for (text,) in self._db.execute(f"SELECT row FROM {self._t} ORDER BY rowid"):
            yield json.loads(text)

    def stem_of(self, key: str) -> str | None:
        found = self._db.execute(
            f"SELECT stem FROM {self._t} WHERE key = ?", (blob(key),)
        ).fetchone()
        return None if found is None or found[0] is None else unblob(found[0])

    def has_stem(self, stem: str) -> bool:
        return self._one("stem", blob(stem))

    def _one(self, column: str, value: bytes) -> bool:
        query = f"SELECT 1 FROM {self._t} WHERE {column} = ? LIMIT 1"
        return self._db.execute(query, (value,)).fetchone() is not None

    def select(self, keep: Callable[[str], bool]) -> RowList:
        """The rows whose key ``keep`` accepts, in order, as a list read on demand."""
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS picks (n INTEGER PRIMARY KEY, list, id)")
        tag = next(_lists)
        picks = (
            (tag, rid)
            for rid, key in self._db.execute(f"SELECT rowid, key FROM {self._t} ORDER BY rowid")
            if keep(unblob(key))
        )
        self._db.executemany("INSERT INTO picks (list, id) VALUES (?, ?)", picks)
        return RowList(self, tag)


_lists = itertools.count()


class RowList(Sequence):
    """Some of a :class:`Rows`' rows, in order, decoded when read (a job's report)."""

    def __init__(self, rows: Rows, tag: int) -> None:
        self._rows, self._tag = rows, tag
        db = rows._db
        self._first, self._len = db.execute(
            "SELECT MIN(n), COUNT(*) FROM picks WHERE list = ?", (tag,)
        ).fetchone()

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        query = f"SELECT row FROM {self._rows._t} WHERE rowid = (SELECT id FROM picks WHERE n = ?)"
        return json.loads(self._rows._db.execute(query, (self._first + i,)).fetchone()[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        query = (
            f"SELECT r.row FROM picks p JOIN {self._rows._t} r ON r.rowid = p.id "
            "WHERE p.list = ? ORDER BY p.n"
        )
        for (text,) in self._rows._db.execute(query, (self._tag,)):
            yield json.loads(text)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"RowList({len(self)} rows)"


class Names(MutableSet):
    """A set of file names in a table of a :func:`scratch` database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute("CREATE TABLE names (name BLOB PRIMARY KEY)")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        query = "SELECT 1 FROM names WHERE name = ?"
        return self._db.execute(query, (blob(name),)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        for (name,) in self._db.execute("SELECT name FROM names ORDER BY name"):
            yield unblob(name)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM names").fetchone()[0]

    def add(self, name: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO names VALUES (?)", (blob(name),))

    def discard(self, name: str) -> None:
        self._db.execute("DELETE FROM names WHERE name = ?", (blob(name),))

    def update(self, names: Iterable[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO names VALUES (?)", ((blob(n),) for n in names))


@dataclass
class Record:
    """A job's journal: the run, and per image (by :func:`image_key`) its entry or error.
    What it holds lives in a :func:`scratch` database, not in memory."""

    out: Path
    run: dict[str, Any]
    db: sqlite3.Connection = field(default_factory=scratch, repr=False)
    items: Rows = field(init=False)
    errors: Rows = field(init=False)
    # every output file name this run has claimed, finished or not: its own to replace
    owned: Names = field(init=False)
    _journal: IO[str] | None = None

    def __post_init__(self) -> None:
        self.items, self.errors = Rows(self.db, "items"), Rows(self.db, "errors")
        self.owned = Names(self.db)

    @classmethod
    def read(cls, out: Path) -> Record | None:
        """The record in ``out``, or None if there is none; ValueError if it can't be read.
        A torn last line (a kill mid-write) and lines xcam would not write are ignored.
        Read a line at a time: a dataset's journal is never held whole in memory."""
        path = out / JOURNAL
        record = None
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if record is None:
                        if not isinstance(row, dict) or not isinstance(row.get("run"), dict):
                            break
                        record = cls(out, row["run"])
                    elif isinstance(row, dict):
                        record._take(row)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} can't be read ({e})") from None
        if record is None:
            raise ValueError(f"{path} is not a record xcam wrote (no run on its first line)")
        return record

    def _take(self, row: dict[str, Any]) -> None:
        """A journal line after the run: names claimed, or an image's row."""
        if isinstance(row.get("files"), list):
            self.owned.update(n for n in row["files"] if _plain_name(n))
        elif isinstance(row.get("key"), str) and _sane(row):
            self._apply(row)

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
        return list(self.owned)

    def claim(self, names: list[str]) -> None:
        """Record ``names`` as this run's before writing them: an interrupt between two
        files leaves nothing the next run would take for someone else's."""
        new = [n for n in names if n not in self.owned]
        if new:
            self.owned.update(new)
            self._write({"files": new})

    def finished(self, key: str, stamp: list[int]) -> dict[str, Any] | None:
        """The row of the image ``key`` if this run explained it from an identical file
        (the same ``stamp``) and its files are there; else None."""
        item = self.items.get(key)
        done = (
            item is not None
            and item.get("stamp") == stamp
            and all((self.out / name).is_file() for name in _files_of(item))
        )
        return item if done else None

    def open(self) -> None:
        """(Re)write the journal, the run and what it holds, then keep it open to append."""
        names = iter(self.owned)
        claimed = ({"files": c} for c in iter(lambda: list(itertools.islice(names, 1024)), []))
        rows = itertools.chain([{"run": self.run}], claimed, self.items.rows(), self.errors.rows())
        with atomic(self.out / JOURNAL) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(_clean(row)) + "\n")
        self._journal = open(self.out / JOURNAL, "a", encoding="utf-8")  # noqa: SIM115

    def add(self, row: dict[str, Any]) -> None:
        """One image done (or failed): in the record and, flushed at once, in the journal."""
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
            for name, table in (("images", self.items), ("errors", self.errors)):
                f.write(f',\n  "{name}": [')
                for n, row in enumerate(table.rows()):
                    text = json.dumps(_clean(_public(row)), indent=2, allow_nan=False)
                    f.write(("," if n else "") + "\n    " + text.replace("\n", "\n    "))
                f.write("\n  ]" if table else "]")
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
