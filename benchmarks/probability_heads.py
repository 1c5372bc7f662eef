"""A model that ends in a sigmoid, explained eager and from its exports (issue 12.1 / 12.2).

The X-ray-style model of the tests (residual blocks, a convolution over the whole map to
one logit, Dropout, Sigmoid; 64² input) made confident: logit +20 on one input, -21 on
another. Per export format, with and without ``pre_activation``: whether the export (with
in-graph gradients) passes its parity check, how many parity samples were saturated, and
how far the file's Grad-CAM map is from eager's on the two confident inputs.

    python benchmarks/probability_heads.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the test models, one copy

from common import RESULTS, environment, write_results
from heads import calibrate, xray

import exporters
import xcam

LAYER = "features.block3"
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}


def run() -> list[dict]:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    model = calibrate(xray(), x, [20.0, -21.0])
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pre in (False, True):
            eager = xcam.GradCAM(model, LAYER, pre_activation=pre)(x)
            for fmt in SUFFIX:
                path = Path(tmp) / f"m_{pre}{SUFFIX[fmt]}"
                row = {"format": fmt, "pre_activation": pre}
                try:
                    report = exporters.export(
                        model,
                        [LAYER],
                        x,
                        path,
                        format=fmt,
                        gradients=True,
                        pre_activation=pre,
                        aoti=False,
                    )
                except exporters.ParityError as e:
                    rows.append({**row, "parity": f"fails: {e}"})
                    continue
                saturated = [n for n in report.notes if "saturated" in n]
                got = xcam.GradCAM(xcam.load(path, trust_code=True))(x)
                diff = (got.maps - eager.maps).abs().flatten(1).amax(dim=1)
                rows.append(
                    {
                        **row,
                        "parity": "ok",
                        "saturated": saturated[0].split(" parity")[0] if saturated else "0",
                        "logits": [round(v, 4) for v in got.logits.flatten().tolist()],
                        "targets": got.targets.tolist(),
                        "max_abs_map_diff": [float(f"{v:.2e}") for v in diff.tolist()],
                    }
                )
    return rows


def main() -> None:
    rows = run()
    intro = (
        "Grad-CAM maps of a confident sigmoid model (logit +20 / -21) from files exported "
        "with in-graph gradients, against eager xcam with the same `pre_activation`; "
        "`max_abs_map_diff` per input (positive, negative). Without `pre_activation` the "
        "probability's gradient is saturated (sigmoid'(-21) = 7.6e-10; ONNX Runtime gives 0), "
        "so its map is not determined in float32. Reproduce: "
        "`python benchmarks/probability_heads.py`."
    )
    print(
        write_results(
            RESULTS / "probability_heads",
            environment(torch.get_num_threads()),
            rows,
            "Probability heads: exported maps vs eager",
            intro,
            [
                "format",
                "pre_activation",
                "parity",
                "saturated samples",
                "logits",
                "targets",
                "max abs map diff",
            ],
            lambda r: [
                r["format"],
                r["pre_activation"],
                r["parity"],
                r.get("saturated", ""),
                r.get("logits", ""),
                r.get("targets", ""),
                r.get("max_abs_map_diff", ""),
            ],
        )
    )


if __name__ == "__main__":
    main()
