"""Explainers for the Ray tests, sent to the workers by value (this module imports no
torch, so what a worker imports is the explainer's own doing)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


class Wrapped:
    """An explainer made in the worker by ``factory``, its attributes passed through."""

    def __init__(self, factory):
        self.inner = factory()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, labels):
        return self.inner(x, labels)


class Probe(Wrapped):
    """Writes, per batch, what the worker process has imported."""

    def __init__(self, factory, folder: str):
        super().__init__(factory)
        self.folder = Path(folder)

    def __call__(self, x, labels):
        out = self.inner(x, labels)
        seen = {"pid": os.getpid(), "torch": "torch" in sys.modules}
        (self.folder / f"{os.getpid()}-{id(out)}.json").write_text(json.dumps(seen))
        return out


class Killer(Wrapped):
    """The first batch any worker gets kills that worker's process (once: a marker file);
    a batch holding a flat image (one colour) kills every worker that runs it."""

    def __init__(self, factory, marker: str):
        super().__init__(factory)
        self.marker = marker

    def __call__(self, x, labels):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            if not any(all(c.max() == c.min() for c in sample) for sample in x):
                return self.inner(x, labels)
        os._exit(1)  # the process dies mid-batch, as an OOM kill or a lost node would
