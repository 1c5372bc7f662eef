"""The timing loop: one warm-up call per arm, then rotating rounds; and the statistics."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def measure(
    arms: dict[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each arm, ``repeats`` each after one warm-up call. Arms run
    interleaved round by round in a rotating order: whichever arm follows another pays for
    the threads it left spinning, so no arm may always sit in the same place."""
    for fn in arms.values():
        fn()
    if sync is not None:
        sync()
    times: dict[str, list[float]] = {k: [] for k in arms}
    keys = list(arms)
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            arms[key]()
            if sync is not None:
                sync()
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def spread(ms: list[float]) -> tuple[float, float, float]:
    """(median, 10th percentile, 90th percentile), by linear interpolation."""
    if len(ms) == 1:
        return ms[0], ms[0], ms[0]
    q = statistics.quantiles(ms, n=10, method="inclusive")
    return statistics.median(ms), q[0], q[-1]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` (None: left alone) for the block."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
