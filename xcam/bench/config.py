"""What a bench run measures: the backends, the peers, the presets and :class:`BenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from xcam.core.artifact import format_of
from xcam.core.errors import XCamError

BACKENDS = ("eager", "torchscript", "onnxruntime", "pt2", "ingraph")
PEERS = ("pytorch-grad-cam", "torchcam", "captum")

PRESETS: dict[str, dict[str, Any]] = {
    # a smoke run: about a minute on 2 CPU cores
    "quick": {
        "models": ["torchvision:resnet18"],
        "methods": ["gradcam"],
        "backends": ["eager", "onnxruntime"],
        "devices": ["cpu"],
        "batches": [1],
        "input_size": 112,
        "repeats": 5,
        "peers": True,
    },
    # the committed results (benchmarks/results/bench_*.{json,md,png})
    "full": {
        "models": ["torchvision:resnet50"],
        "methods": ["gradcam", "gradcam++", "layercam"],
        "backends": ["eager", "torchscript", "onnxruntime", "ingraph"],
        "devices": ["cpu"],
        "batches": [1, 32],
        "input_size": 224,
        "repeats": 5,
        "peers": True,
    },
}


@dataclass
class BenchConfig:
    models: list[str]
    methods: list[str]
    backends: list[str]
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    batches: list[int] = field(default_factory=lambda: [1])
    input_size: int | None = None
    repeats: int = 5
    peers: bool = False
    layer: str | None = None
    threads: int | None = None
    memory: bool = True  # each arm's peak memory for one call, after the timings

    def check(self) -> None:
        """Refuse an unknown method, backend or device, an exported file, or a count < 1."""
        from xcam.methods import get_method

        for m in self.methods:
            get_method(m)  # an unknown name lists the available ones
        files = [m for m in self.models if format_of(m) is not None]
        if files:  # refused before anything reads them: an exported file may carry code
            raise XCamError(
                f"{', '.join(files)}: bench times a PyTorch model against its own exports "
                "(--backends), so give the model's spec (demo, torchvision:NAME, "
                "package.module:factory), not an exported file"
            )
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise XCamError(f"unknown backend(s) {', '.join(bad)}; one of {', '.join(BACKENDS)}")
        bad = [d for d in self.devices if d not in ("cpu", "cuda")]
        if bad:
            raise XCamError(f"unknown device(s) {', '.join(bad)}; cpu or cuda")
        if "cuda" in self.devices and not torch.cuda.is_available():
            raise XCamError("--devices cuda was asked for, but CUDA is not available here")
        if any(b < 1 for b in self.batches) or self.repeats < 1:
            raise XCamError("batch sizes and --repeats must be positive")
