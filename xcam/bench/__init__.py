"""``xcam bench``: what an explanation costs, per method, backend, device and batch size.

For every model x device x backend x batch, the *arms* — plain inference on that backend
(the floor), each method through xcam, and on the eager backend the same methods from the
peer libraries (pytorch-grad-cam, torchcam, captum) — are timed side by side: one warm-up
call each, then ``repeats`` rounds in a rotating order, so machine drift and the threads
one arm leaves spinning hit every arm alike. CUDA arms synchronise the device. Each row
gives the median and the 10th/90th percentiles, the ratio to plain inference on the same
backend and device, and images per second.

Backends: ``eager``; ``torchscript``, ``onnxruntime`` and ``pt2`` (activations from the
exported file, gradients from the eager tail; the floor is the plain model exported the
same way); ``ingraph`` (an ONNX file exported with gradients: the gradient methods read
them from the file; the floor is plain ONNX Runtime). On ``onnxruntime`` the arm
``activations`` is the exported forward alone (logits and activations).

Modules: :mod:`~xcam.bench.config` (what to run), :mod:`~xcam.bench.timing` (the loop and
the statistics), :mod:`~xcam.bench.floors` (plain inference per backend),
:mod:`~xcam.bench.arms` (xcam's arms), :mod:`~xcam.bench.peers` (the peer libraries'),
:mod:`~xcam.bench.run` (:func:`run_bench`), :mod:`~xcam.bench.goals`,
:mod:`~xcam.bench.report` (rows, JSON, Markdown, terminal) and :mod:`~xcam.bench.plot`.
"""

from __future__ import annotations

from xcam.bench.arms import ingraph_methods
from xcam.bench.config import BACKENDS, PEERS, PRESETS, BenchConfig
from xcam.bench.floors import export_plain, ort_session
from xcam.bench.goals import goals
from xcam.bench.peers import peer_arm
from xcam.bench.plot import plot
from xcam.bench.report import HEADER, BenchReport, Row, environment, to_markdown, to_terminal
from xcam.bench.run import run_bench
from xcam.bench.timing import measure, spread

__all__ = [
    "BACKENDS",
    "HEADER",
    "PEERS",
    "PRESETS",
    "BenchConfig",
    "BenchReport",
    "Row",
    "environment",
    "export_plain",
    "goals",
    "ingraph_methods",
    "measure",
    "ort_session",
    "peer_arm",
    "plot",
    "run_bench",
    "spread",
    "to_markdown",
    "to_terminal",
]
