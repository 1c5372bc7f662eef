"""A job's images, kept on disk: each once, in order, with its stem and whether it is still
to do.

The plan lives in a scratch SQLite database (:func:`xcam.record.scratch`) beside the
record's, so a job holds no per-image state in memory however many images it has: the
engines read the images to do a batch at a time (:attr:`Plan.todo`), and each image's
stem when they write it (:attr:`Plan.stems`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xcam.files import next_stem
from xcam.pipeline.batch import output_names
from xcam.pipeline.sources import Item
from xcam.record import Rows, blob, image_key, scratch, transaction, unblob

CHUNK = 1024  # images read from the plan at a time


class Plan:
    """The images of a job by :func:`~xcam.record.image_key`, in the order first given."""

    def __init__(self) -> None:
        self.db = scratch()
        self.db.execute(
            "CREATE TABLE plan (seq INTEGER PRIMARY KEY, key BLOB UNIQUE NOT NULL, "
            "path BLOB NOT NULL, label TEXT NOT NULL, stem BLOB, fresh INTEGER, todo INTEGER)"
        )
        self.db.execute("CREATE INDEX plan_stem ON plan (stem)")
        self.db.execute("CREATE INDEX plan_todo ON plan (todo)")

    @classmethod
    def of(cls, items: Iterable[Item | Path | str], say: Callable[[str], None]) -> Plan:
        """A plan of ``items`` (consumed as they come: a generator of a million paths is
        never a list); an image given twice is explained once (the first names it)."""
        plan = cls()
        insert = "INSERT OR IGNORE INTO plan (key, path, label) VALUES (?, ?, ?)"
        with transaction(plan.db):
            for it in items:
                item = it if isinstance(it, Item) else Item(Path(it))
                row = (blob(image_key(item.path)), blob(str(item.path)), _label(item.label))
                if not plan.db.execute(insert, row).rowcount:
                    say(f"note: {item.path} is given more than once; explained once")
        return plan

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM plan").fetchone()[0]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return self._first("SELECT 1 FROM plan WHERE key = ?", blob(key)) is not None

    def _first(self, query: str, *args: Any) -> Any:
        return self.db.execute(query, args).fetchone()

    def _chunks(self, where: str = "") -> Iterator[list[tuple[int, str, Item, str | None]]]:
        """(seq, key, item, stem) of every image (``where``: of some), in order, a chunk at
        a time: a chunk is read whole before its caller changes the plan."""
        last = -1
        while rows := self.db.execute(
            f"SELECT seq, key, path, label, stem FROM plan WHERE seq > ? {where} "
            "ORDER BY seq LIMIT ?",
            (last, CHUNK),
        ).fetchall():
            yield [
                (seq, unblob(key), _item(path, label), None if stem is None else unblob(stem))
                for seq, key, path, label, stem in rows
            ]
            last = rows[-1][0]

    def drop_outputs(self, out: Path, owned: Container[str]) -> bool:
        """Leave out the images that are ``out``'s files named in ``owned`` (a run's own
        outputs, with ``-o .`` beside the images); whether there were any."""
        folder = os.path.realpath(out)
        gone = [
            (seq,)
            for chunk in self._chunks()
            for seq, key, _item, _stem in chunk
            if os.path.dirname(key) == folder and os.path.basename(key) in owned
        ]
        with transaction(self.db):
            self.db.executemany("DELETE FROM plan WHERE seq = ?", gone)
        return bool(gone)

    def assign_stems(self, known: Rows) -> None:
        """Every image's stem: the one ``known`` (a record's rows) gives it, or a new one
        (marked fresh) that neither ``known`` nor this plan has."""
        taken = _Taken(self, known)
        with transaction(self.db):
            self.db.execute("UPDATE plan SET stem = NULL, fresh = NULL")
            for chunk in self._chunks():
                for seq, key, item, _stem in chunk:
                    stem = known.stem_of(key)
                    fresh = stem is None
                    if stem is None:
                        stem = next_stem(item.path, taken)
                    self.db.execute(
                        "UPDATE plan SET stem = ?, fresh = ? WHERE seq = ?",
                        (blob(stem), int(fresh), seq),
                    )

    def fresh_names(self, method: str, overlays: bool) -> Iterator[str]:
        """The output files of the images with a fresh stem (:meth:`assign_stems`)."""
        for chunk in self._chunks("AND fresh = 1"):
            for _seq, _key, _item, stem in chunk:
                yield from output_names(f"{stem}_{method}", overlays)

    def mark_todo(self, done: Callable[[str, Item], bool]) -> int:
        """Number the images still to do in order (``done(key, item)``: it is not); how
        many are done."""
        skipped = n = 0
        with transaction(self.db):
            self.db.execute("UPDATE plan SET todo = NULL")
            for chunk in self._chunks():
                numbered = []
                for seq, key, item, _stem in chunk:
                    if done(key, item):
                        skipped += 1
                    else:
                        numbered.append((n, seq))
                        n += 1
                self.db.executemany("UPDATE plan SET todo = ? WHERE seq = ?", numbered)
        return skipped

    @property
    def todo(self) -> Todo:
        """The images still to do (:meth:`mark_todo`), in order, read when sliced."""
        return Todo(self)

    @property
    def stems(self) -> Stems:
        """Each image's stem by key (:meth:`assign_stems`)."""
        return Stems(self)


class Todo(Sequence):
    """A plan's images to do as a sequence of :class:`Item` (a slice is one query)."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._len = plan._first("SELECT COUNT(*) FROM plan WHERE todo IS NOT NULL")[0]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            start, stop, step = i.indices(self._len)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            rows = self._plan.db.execute(
                "SELECT path, label FROM plan WHERE todo >= ? AND todo < ? ORDER BY todo",
                (start, stop),
            )
            return [_item(path, label) for path, label in rows]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        return self[i : i + 1][0]

    def __iter__(self) -> Iterator[Item]:
        for start in range(0, self._len, CHUNK):
            yield from self[start : start + CHUNK]


class Stems(Mapping):
    """A plan's stems by image key."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def __getitem__(self, key: str) -> str:
        found = self._plan._first("SELECT stem FROM plan WHERE key = ?", blob(key))
        if found is None or found[0] is None:
            raise KeyError(key)
        return unblob(found[0])

    def __iter__(self) -> Iterator[str]:
        for (key,) in self._plan.db.execute("SELECT key FROM plan WHERE stem IS NOT NULL"):
            yield unblob(key)

    def __len__(self) -> int:
        return self._plan._first("SELECT COUNT(stem) FROM plan")[0]


class _Taken(Container):
    """The stems a new one must avoid: a record's and a plan's."""

    def __init__(self, plan: Plan, known: Rows) -> None:
        self._plan, self._known = plan, known

    def __contains__(self, stem: object) -> bool:
        if not isinstance(stem, str):
            return False
        query = "SELECT 1 FROM plan WHERE stem = ? LIMIT 1"
        return self._known.has_stem(stem) or self._plan._first(query, blob(stem)) is not None


def _label(label: Any) -> str:
    return json.dumps(label, default=str)


def _item(path: bytes, label: str) -> Item:
    return Item(Path(unblob(path)), json.loads(label))
