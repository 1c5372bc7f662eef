"""Writing files safely: a reader (or an interrupted run) never sees half a file, and a
planted file or symlink is never written through.

Temporary files are created with ``O_EXCL`` under unpredictable names (``tempfile``) in the
target's own folder, so the final ``os.replace`` is one atomic rename on one file system;
``os.replace`` replaces a symlink at the final path by the new file, never its target.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# the process umask, read once (reading it means setting it): new files get the usual
# permissions, not mkstemp's 0600
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _prefix(name: str) -> str:
    # short enough that the temporary name fits NAME_MAX (255 bytes) whatever ``name`` is
    return "." + os.fsencode(name)[:40].decode("utf-8", "ignore") + "."


@contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success it replaces ``path`` in one
    step, on any error or interrupt it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path.name), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()


@contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """Yield ``path``'s name inside a new private folder beside it, for a writer that may
    add files of its own (an ONNX ``.data`` file). On success every file there is moved
    beside ``path`` (``path`` itself last); on any error the folder and all in it are
    removed, and whatever was at ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path.name), suffix=".tmp"))
    try:
        main = work / path.name
        yield main
        if not main.is_file():
            raise FileNotFoundError(f"the writer did not create {path.name}")
        for f in sorted(work.iterdir()):
            if f != main:
                os.replace(f, path.parent / f.name)
        os.replace(main, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
