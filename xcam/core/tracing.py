"""Locks for tracers, which patch process-wide state while they run.

``torch.export``, ``torch.onnx.export``, ``torch.jit.trace`` / ``script`` and ``make_fx``
can't run two at a time in one process, and a failure half-way could leave their state
behind: xcam runs them one at a time under :data:`TRACE_LOCK` (re-entrant).

``torch.fx``'s symbolic tracer goes further: while it traces, *every* ``nn.Module`` call in
the process is routed into the trace, including other threads' plain forwards, which then
fail. So explaining is a *shared* section of :data:`FX_GATE` and cutting a tail with
``torch.fx`` an *exclusive* one: the cut waits until no explanation is running, and no
explanation starts until it is done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

TRACE_LOCK = threading.RLock()


class SharedExclusive:
    """Many threads share it, or one holds it alone. Re-entrant per thread; a thread that
    shares it and asks to hold it alone gives its share back while it waits, so that two
    such threads can't deadlock; waiting exclusive holders go before new sharers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharers = 0  # threads sharing it
        self._owner: int | None = None  # the thread holding it alone
        self._waiting = 0  # threads waiting to hold it alone
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        first = self._depth() == 0 and self._owner != me
        if first:
            with self._cond:
                while self._owner is not None or self._waiting:
                    self._cond.wait()
                self._sharers += 1
        self._local.depth = self._depth() + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if first:
                with self._cond:
                    self._sharers -= 1
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            yield
            return
        sharing = self._depth() > 0
        with self._cond:
            if sharing:
                self._sharers -= 1
            self._waiting += 1
            while self._owner is not None or self._sharers:
                self._cond.wait()
            self._waiting -= 1
            self._owner = me
        try:
            yield
        finally:
            with self._cond:
                self._owner = None
                if sharing:
                    self._sharers += 1
                self._cond.notify_all()


FX_GATE = SharedExclusive()
