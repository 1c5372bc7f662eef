"""The interface every runtime shares: run a batch, get logits and activations by name."""

from __future__ import annotations

from pathlib import Path

import torch

from exporters.metadata import ExportMetadata
from xcam.core.artifact import check_input_shape
from xcam.errors import InputError, ModelSpecError


class Backend:
    """An exported model loaded for one runtime and device.

    ``run(x)`` returns ``{"logits": …, "<layer>": …}`` as torch tensors on ``device``;
    calling the backend returns ``(logits, *activations)`` like :class:`xcam.CamModel`.
    A backend is usable wherever a model is: ``xcam.GradCAM(xcam.load("m.onnx"))``.
    """

    format = ""

    def __init__(
        self,
        path: str | Path,
        metadata: ExportMetadata,
        device: str = "cpu",
        graph_input_shape: list[int | None] | None = None,
    ):
        self.path = Path(path)
        self.metadata = metadata
        self.device = torch.device(device)
        try:  # never trust a size the file claims: it decides how large images are made
            check_input_shape(self.path.name, metadata.input_shape, graph_input_shape)
        except ValueError as e:
            raise ModelSpecError(str(e)) from None

    @property
    def layer_names(self) -> list[str]:
        return list(self.metadata.layers)

    @property
    def output_names(self) -> list[str]:
        return list(self.metadata.output_names)

    def check_input(self, x: torch.Tensor) -> None:
        shape = self.metadata.input_shape
        if x.dim() != len(shape):
            raise InputError(f"{self.path.name} takes {len(shape)}-D input, got {tuple(x.shape)}")
        for i, (got, want) in enumerate(zip(x.shape, shape, strict=True)):
            if want is not None and got != want:
                dims = "x".join("?" if s is None else str(s) for s in shape)
                raise InputError(
                    f"{self.path.name} was exported for input {dims}; got {tuple(x.shape)} "
                    f"(dimension {i} is static; export with dynamic shapes to change it)"
                )

    @property
    def has_gradients(self) -> bool:
        return bool(self.metadata.gradients)

    @property
    def has_target_input(self) -> bool:
        return "target" in self.metadata.input_names

    def _run(self, x: torch.Tensor, target: torch.Tensor | None) -> list[torch.Tensor]:
        raise NotImplementedError

    def _target(self, x: torch.Tensor, target: object) -> torch.Tensor | None:
        if target is None:
            return (
                torch.full((x.shape[0],), -1, dtype=torch.long) if self.has_target_input else None
            )
        if not self.has_target_input:
            raise InputError(
                f"{self.path.name} takes no target input (it explains the top-1 class); "
                "re-export with target_input=True (--target-input) to choose classes"
            )
        t = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        return t.expand(x.shape[0]).clone() if t.numel() == 1 else t

    def run(self, x: torch.Tensor, target: object = None) -> dict[str, torch.Tensor]:
        """Outputs by name for a float ``[B, C, H, W]`` batch (``target``: a class per sample,
        -1 for top-1, where the file was exported with a target input)."""
        self.check_input(x)
        outs = self._run(x, self._target(x, target))
        return dict(zip(self.output_names, outs, strict=True))

    def __call__(self, x: torch.Tensor, target: object = None) -> tuple[torch.Tensor, ...]:
        outs = self.run(x, target)
        return tuple(outs[n] for n in self.output_names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, device={str(self.device)!r}, "
            f"layers={self.layer_names})"
        )
