"""Output folders of a job: one run at a time per folder, file names that fit and never
collide, atomic writes (from :mod:`xcam.core.files`)."""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xcam.core.errors import OutputError
from xcam.core.files import atomic, sha256_file, staged

__all__ = ["LOCK_NAME", "atomic", "fit_stem", "locked_folder", "sha256_file", "staged"]

LOCK_NAME = ".xcam.lock"
# room left in a file name (255 bytes on common file systems) for what follows a stem
_NAME_BYTES = 255 - 40


@contextmanager
def locked_folder(out: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold ``out``'s lock while a job writes there: a second job (another process, or
    another thread) gets an :class:`OutputError` at once, or with ``wait`` queues behind
    the first. The lock is the operating system's (``filelock``), so it is released when
    the holder exits, even when killed."""
    from filelock import FileLock, Timeout

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"can't create the output folder {str(out)!r}: {e}") from None
    lock = FileLock(out / LOCK_NAME, timeout=-1 if wait else 0, thread_local=False)
    try:
        lock.acquire()
    except (Timeout, RuntimeError):  # RuntimeError: this very thread holds it already
        raise OutputError(
            f"another xcam run is writing to {out} (it holds {out / LOCK_NAME}); wait for it "
            "to finish, pass --wait (wait=True) to start when it does, or choose another --out"
        ) from None
    except OSError as e:  # a read-only folder, a planted link loop, …
        raise OutputError(f"can't lock the output folder {out}: {e.strerror or e}") from None
    try:
        yield out
    finally:
        lock.release()


def fit_stem(stem: str, limit: int = _NAME_BYTES) -> str:
    """``stem`` if it fits ``limit`` bytes, else its start plus a hash of the whole, so that
    long names stay unique and every output name fits the file system."""
    raw = stem.encode("utf-8", "surrogateescape")  # names that aren't UTF-8 stay as they are
    if len(raw) <= limit:
        return stem
    digest = hashlib.sha1(raw).hexdigest()[:10]
    head = raw[: limit - 11].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def unique_stems(paths: Iterable[Path], taken: Iterable[str] = ()) -> dict[Path, str]:
    """A distinct, file-system-safe stem for each path (``a``, ``a_2``, … for equal names),
    avoiding those already ``taken``."""
    used = set(taken)
    stems: dict[Path, str] = {}
    for p in paths:
        stems[p] = next_stem(p, used)
        used.add(stems[p])
    return stems


def next_stem(path: Path, used: Container[str]) -> str:
    """``path``'s stem, file-system-safe and not in ``used``: ``a``, else ``a_2``, …"""
    base = fit_stem(path.stem)
    stem, n = base, 1
    while stem in used:
        n += 1
        stem = f"{base}_{n}"
    return stem
