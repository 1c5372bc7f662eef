"""What an export wrote and how closely it matches eager PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xcam.core.artifact import ExportMetadata


@dataclass
class ExportReport:
    """What an export wrote and how closely it matches eager PyTorch."""

    path: Path
    format: str
    outputs: dict[str, list[int | None]]
    file_bytes: int
    export_seconds: float
    check_seconds: float | None = None
    max_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    metadata: ExportMetadata | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"exported {self.path} ({self.format}, {self.file_bytes / 1e6:.2f} MB) "
            f"in {self.export_seconds:.1f}s"
        ]
        for name, shape in self.outputs.items():
            dims = "x".join("B" if s is None else str(s) for s in shape)
            err = self.max_errors.get(name)
            check = f"  max abs err {err['max_abs']:.2e} (rel {err['max_rel']:.2e})" if err else ""
            lines.append(f"  output {name:<20} {dims}{check}")
        if self.check_seconds is not None:
            lines.append(f"  parity with eager: ok (batches 1, 2, 3; {self.check_seconds:.1f}s)")
        else:
            lines.append("  parity with eager: not checked (--no-check)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
