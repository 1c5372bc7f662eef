"""The interface every runtime shares: run a batch, get logits and activations by name."""

from __future__ import annotations

from pathlib import Path

import torch

from xcam.core.artifact import (
    TARGET_INPUT,
    ExportMetadata,
    check_file_metadata,
    static_mismatch,
)
from xcam.core.errors import InputError


class Backend:
    """An exported model loaded for one runtime and device.

    ``run(x)`` returns ``{LOGITS: …, "<layer>": …}`` as torch tensors on ``device``;
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
        *,
        graph_inputs: list[str] | None = None,
        graph_outputs: list[str] | None = None,
    ):
        self.path = Path(path)
        self.metadata = metadata
        self.device = torch.device(device)
        # a file is untrusted input: its metadata decides what is read and run
        check_file_metadata(
            self.path.name, metadata, graph_input_shape, graph_inputs, graph_outputs
        )

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
        problem = static_mismatch(self.path.name, shape, tuple(x.shape))
        if problem is not None:
            raise InputError(problem)

    @property
    def exported_dtype(self) -> torch.dtype:
        """The floating dtype the file was exported for (float32 unless it says otherwise)."""
        found = getattr(torch, str(self.metadata.dtype), None)
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return found
        return torch.float32

    @property
    def activation(self) -> str | None:
        """The final activation the file's ``logits`` went through (None: raw scores)."""
        from xcam.core.decision import ACTIVATIONS

        found = self.metadata.activation
        if self.metadata.pre_activation or found not in ACTIVATIONS:
            return None
        return found

    @property
    def has_gradients(self) -> bool:
        return bool(self.metadata.gradients)

    @property
    def has_target_input(self) -> bool:
        return TARGET_INPUT in self.metadata.input_names

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
