"""Quality of every method on the bundled demo model, read next to its cost.

For N generated images that training never saw (their own seed), each registered method
explains the true class (layer ``block3`` where a method takes one) and is scored by
(see :mod:`xcam.quality`):

- the pointing game: the share of maps whose maximum lies inside the object's mask;
- deletion AUC: the class probability as the most salient pixels are replaced by a blurred
  copy of the image, most salient first (lower is more faithful);
- insertion AUC: the class probability as they are put back into the blurred copy (higher
  is more faithful), both after Petsiuk et al., BMVC 2018;
- the median milliseconds per image (eager, batch of 1, CPU) for context.

Two reference rows need no model: a random map (uniform noise per image) and a centred
Gaussian (the same map for every image).

    python benchmarks/quality.py                          # every method, 200 images
    python benchmarks/quality.py --images 50 --methods gradcam scorecam
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import common
import torch

import xcam
from xcam.demo import load_demo_model
from xcam.demo.data import make_dataset, to_tensor
from xcam.demo.train import HELDOUT_SEED, SAMPLE_SEED, TRAIN_SEED
from xcam.quality import deletion_insertion, pointing_game

LAYER = "block3"
SEED = 6  # the images of this benchmark: a seed neither training nor the model card used
assert SEED not in (TRAIN_SEED, HELDOUT_SEED, SAMPLE_SEED)


def explain(
    name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, float, int]:
    """Maps of ``name`` for every image, one call per image: ``(maps, median ms, degenerate)``.
    ``name`` may carry options: ``eigencam:center=1``."""
    name, options = method_spec(name)
    cls = xcam.get_method(name)
    method = cls(model, LAYER, **options) if cls.uses_layers else cls(model, **options)
    method(x[:1], targets=y[:1])  # warm-up
    maps, times, degenerate = [], [], 0
    for i in range(len(x)):
        start = time.perf_counter()
        result = method(x[i : i + 1], targets=y[i : i + 1])
        times.append(time.perf_counter() - start)
        maps.append(result.maps)
        degenerate += int(result.degenerate.sum())
    return torch.cat(maps), statistics.median(times) * 1e3, degenerate


def method_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``"eigencam:center=1,eigen_smooth=0"`` -> ``("eigencam", {"center": True, …})``
    (numbers stay numbers; 0/1, true/false are booleans)."""
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        low = value.lower()
        if low in ("1", "true", "yes", "0", "false", "no"):
            options[key] = low in ("1", "true", "yes")
        else:
            try:
                options[key] = float(value) if "." in value else int(value)
            except ValueError:
                options[key] = value
    return name, options


def reference_maps(kind: str, n: int, size: tuple[int, int]) -> torch.Tensor:
    """``random``: uniform noise per image (seeded); ``centre``: a Gaussian of standard
    deviation a quarter of the side, centred, the same for every image."""
    h, w = size
    if kind == "random":
        return torch.rand(n, h, w, generator=torch.Generator().manual_seed(SEED))
    i = torch.arange(h, dtype=torch.float32)[:, None] - (h - 1) / 2
    j = torch.arange(w, dtype=torch.float32)[None, :] - (w - 1) / 2
    sigma = max(h, w) / 4
    return torch.exp(-(i**2 + j**2) / (2 * sigma**2)).expand(n, h, w).clone()


def score(
    name: str,
    kind: str,
    maps: torch.Tensor,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    args: argparse.Namespace,
) -> dict:
    hits = pointing_game(maps, masks)
    deletion, insertion = deletion_insertion(
        model, x, maps, y, steps=args.steps, baseline=args.baseline, batch_size=args.batch_size
    )
    n = len(x)

    def sem(v: torch.Tensor) -> float:  # standard error of the mean over images
        return round(float(v.std() / n**0.5), 4) if n > 1 else 0.0

    return {
        "method": name,
        "kind": kind,
        "images": len(x),
        "pointing_game": round(float(hits.float().mean()), 4),
        "deletion_auc": round(float(deletion.mean()), 4),
        "insertion_auc": round(float(insertion.mean()), 4),
        "deletion_sem": sem(deletion),
        "insertion_sem": sem(insertion),
        "insertion_minus_deletion": round(float((insertion - deletion).mean()), 4),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=200, help="generated images (default 200)")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (16)")
    p.add_argument("--methods", nargs="+", default=None, help="registry names (default: all)")
    p.add_argument("--baseline", default="blur", help="'blur' (default), 'mean' or a number")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward when scoring")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=common.RESULTS / "quality")
    a = p.parse_args(argv)
    if a.images < 1 or a.steps < 1:
        p.error("--images and --steps must be positive")
    a.methods = a.methods or xcam.list_methods()
    for name in a.methods:
        try:
            xcam.get_method(method_spec(name)[0])
        except xcam.XCamError as e:
            p.error(str(e))
    if a.baseline not in ("blur", "mean"):
        try:
            a.baseline = float(a.baseline)
        except ValueError:
            p.error(f"--baseline must be 'blur', 'mean' or a number, got {a.baseline!r}")
    return a


def load_data(n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The demo model and ``n`` generated images: ``(model, x, y, masks, accuracy)``."""
    model = load_demo_model()
    images, labels, mask_arr = make_dataset(n, SEED)
    x, y, masks = to_tensor(images), torch.from_numpy(labels), torch.from_numpy(mask_arr)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return model, x, y, masks, accuracy


def method_rows(
    a: argparse.Namespace,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
) -> list[dict]:
    """One scored row per method of ``a.methods`` (printed as it is done)."""
    rows = []
    for name in a.methods:
        maps, ms, degenerate = explain(name, model, x, y)
        row = score(name, "method", maps, model, x, y, masks, a)
        row.update(
            layer=LAYER if xcam.get_method(method_spec(name)[0]).uses_layers else None,
            ms_per_image=round(ms, 2),
            degenerate=degenerate,
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def reference_rows(
    a: argparse.Namespace,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
) -> list[dict]:
    """The two rows that need no model: a random map and a centred Gaussian."""
    rows = []
    for kind, label in (("random", "random map"), ("centre", "centre Gaussian")):
        maps = reference_maps(kind, len(x), tuple(x.shape[-2:]))
        row = score(label, "reference", maps, model, x, y, masks, a)
        row.update(layer=None, ms_per_image=None, degenerate=0)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def describe(
    a: argparse.Namespace, env: dict, size: tuple[int, int], seconds: float, command: str
) -> str:
    """The paragraph above the table: what was measured, how to read it, how to reproduce."""
    sigma = max(size) / 10  # xcam.quality.baseline_image's default
    baseline = {
        "blur": f"a Gaussian-blurred copy (σ = {sigma:g} px)",
        "mean": "the per-channel mean",
    }.get(a.baseline, f"the constant {a.baseline}")
    return (
        f"The bundled demo model, layer `{LAYER}` for the methods that take one, on "
        f"{a.images} generated 64x64 images (seed {SEED}, never used in training; model "
        f"accuracy {env['accuracy']:.3f}), each explained for its true class. Pointing game: "
        "share of maps whose maximum lies in the object's mask (ties: any maximum inside "
        f"counts; a constant map misses); a random point hits {env['mask_fraction']:.3f} of the "
        "time (the mean mask area). Deletion / insertion AUC (Petsiuk et al., BMVC 2018): "
        "mean area under the true class's softmax probability as the most salient pixels are "
        f"replaced by / restored from {baseline} of the image, {a.steps} steps; lower deletion "
        "and higher insertion are more faithful (± one standard error over the images; every "
        "row scores the same images, so a difference between rows is known more precisely); "
        "ins − del sums both up. ms/image: median of "
        f"batch-1 eager calls, CPU, {a.threads} threads, for context (see the speed "
        "benchmarks). Degenerate: constant maps. torch "
        f"{env['torch']}, {env['date']}, whole run {seconds:.0f} s. Reproduce: `{command}`."
    )


TITLE = "Explanation quality on the demo model: pointing game, deletion, insertion"
HEADER = [
    "method",
    "pointing game ↑",
    "deletion AUC ↓",
    "insertion AUC ↑",
    "ins − del ↑",
    "ms/image",
    "degenerate",
]


def cells(r: dict) -> list[object]:
    """One table row (reference rows in italics)."""
    return [
        r["method"] if r["kind"] == "method" else f"*{r['method']}*",
        f"{r['pointing_game']:.3f}",
        f"{r['deletion_auc']:.3f} ± {r['deletion_sem']:.3f}",
        f"{r['insertion_auc']:.3f} ± {r['insertion_sem']:.3f}",
        f"{r['insertion_minus_deletion']:.3f}",
        "—" if r["ms_per_image"] is None else f"{r['ms_per_image']:.1f}",
        r["degenerate"],
    ]


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, x, y, masks, accuracy = load_data(a.images)
    rows = method_rows(a, model, x, y, masks) + reference_rows(a, model, x, y, masks)
    env = common.environment(a.threads)
    seconds = round(time.perf_counter() - t0, 1)
    env.update(
        model="demo (bundled DemoNet weights)",
        layer=LAYER,
        images=a.images,
        seed=SEED,
        accuracy=round(accuracy, 4),
        mask_fraction=round(float(masks.float().mean()), 4),
        steps=a.steps,
        baseline=a.baseline,
        seconds=seconds,
    )
    command = " ".join(
        ["python benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]
    )
    intro = describe(a, env, tuple(x.shape[-2:]), seconds, command)
    print(common.write_results(a.out, env, rows, TITLE, intro, HEADER, cells))


if __name__ == "__main__":
    main()
