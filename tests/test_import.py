"""``import xcam`` stays cheap: no onnx, onnxruntime, matplotlib, PIL, no CUDA initialisation."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["onnx", "onnxruntime", "matplotlib", "PIL", "torchvision"]

CODE = """
import json, sys
import xcam
plain = [m for m in {heavy} if m in sys.modules]
torch_plain = "torch" in sys.modules
xcam.GradCAM, xcam.CAM, xcam.CamModel, xcam.list_methods()  # touching the API
used = [m for m in {heavy} if m in sys.modules]
import torch
print(json.dumps({{"plain": plain, "torch_plain": torch_plain, "used": used,
                  "cuda_init": torch.cuda.is_initialized()}}))
"""


def test_import_is_light() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["plain"] == [] and facts["torch_plain"] is False
    assert facts["used"] == []  # methods themselves don't pull in the I/O edge
    assert facts["cuda_init"] is False
