"""One process-wide lock for every tracer xcam runs.

``torch.export``, ``torch.onnx.export``, ``torch.jit.trace`` / ``script``, ``make_fx`` and
``torch.fx``'s symbolic tracing patch process-wide state while they run (module call
wrappers, dispatch modes, global flags); two of them at once in one process fail, and a
failure half-way could leave that state behind for every later export. xcam runs them one
at a time under :data:`TRACE_LOCK` (re-entrant: an export may trace a tail inside it).
"""

from __future__ import annotations

import threading

TRACE_LOCK = threading.RLock()
