"""Peak memory of one call of an arm: how much memory explaining a batch needs on top of
what the loaded model already holds.

On a GPU: the CUDA allocator's peak allocated bytes during the call, over those allocated
before it. On the CPU (Linux): the peak resident set during the call (``VmHWM``, restarted
through ``/proc/self/clear_refs``) over the resident set before it. For those figures to be
one call's, memory freed by earlier calls must go back to the system: :func:`cpu_release`
fixes glibc's threshold for serving allocations by ``mmap`` (returned on free; glibc
otherwise raises the threshold as it goes and keeps freed tensors in its heap), so the
readings are repeatable to the megabyte. ONNX Runtime keeps an arena per session sized by
its largest call, so its arms' growth after warm-up is not a call's need: those are left
blank.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD = 64 * 1024
# where glibc's own adjustment ends up once large blocks have been freed (its maximum mmap
# threshold on 64-bit, and twice that for trimming): set on exit, as glibc no longer adjusts
# them once set, and a fixed small threshold would slow every later large allocation
_SETTLED_MMAP_THRESHOLD = 32 * 2**20
_SETTLED_TRIM_THRESHOLD = 64 * 2**20


@functools.cache  # find_library runs ldconfig: once per process, not once per reading
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def rss_supported() -> bool:
    """Whether this process can read and restart its peak resident set (Linux, glibc)."""
    return _STATUS.exists() and _CLEAR_REFS.exists() and _libc() is not None


def status_bytes(field: str) -> int:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes (Linux)."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {_STATUS}")


def _status_mb(field: str) -> float:
    return status_bytes(field) / 2**20


@contextmanager
def cpu_release() -> Iterator[bool]:
    """Within the block, freed memory goes back to the system (see the module's docstring);
    yields whether CPU readings can be taken here. On exit the thresholds are those glibc
    settles at by itself for large tensors (it adjusts them no more once they are set)."""
    libc = _libc() if rss_supported() else None
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)


def peak_growth_mb(call: Callable[[], object], device: str) -> float:
    """MB that one ``call`` needs above what is held before it (see the module's docstring).
    On the CPU, only inside :func:`cpu_release`."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del result
        return (peak - before) / 2**20
    libc = _libc()
    assert libc is not None
    libc.malloc_trim(0)
    _CLEAR_REFS.write_text("5")  # VmHWM starts again from the resident set now
    before = _status_mb("VmRSS")
    result = call()
    peak = _status_mb("VmHWM")
    del result
    return peak - before
