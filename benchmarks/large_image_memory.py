"""Peak memory of explaining one large image, per source pixel: the outputs made in
memory at the image's size (``resize_map`` + ``overlay`` + ``np.save``; ``resize_attribution``
+ ``attribution_image``), as the pipeline did, against the same outputs made a strip of rows
at a time and drawn into the decoded image (``xcam.viz.save_resized``, then ``overlay_into``
/ ``attribution_into``, then ``save_png``).

Each arm runs in a fresh subprocess: the demo model, Grad-CAM on ``block3`` (heatmap) or
Guided Backprop (attribution), a warm-up on a small image, then VmRSS is read, the peak
(VmHWM) reset through ``/proc/self/clear_refs``, and the large image loaded
(``xcam.images.load_image``), preprocessed, explained and written; the growth is
VmHWM − VmRSS before. Linux only.

    python benchmarks/large_image_memory.py                      # 6000x6000, this tree only
    # the old arm with an earlier revision's image loading and pictures (xcam/images.py and
    # xcam/viz.py from git), as the "before" figures:
    python benchmarks/large_image_memory.py --before-rev 5838973
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
NAME = "large_image_memory"
KINDS = ("heatmap", "attribution")


def make_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A smooth random RGB PNG: a seeded 12x12 colour field upscaled bicubically."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    small.resize((width, height), Image.Resampling.BICUBIC).save(path)
    return path


def can_reset_peak() -> str | None:
    """None where the peak RSS can be reset (``/proc/self/clear_refs``), else the reason."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as e:
        return f"/proc/self/clear_refs is not writable here ({e})"
    return None


def checkout(rev: str, dest: Path) -> Path:
    """``xcam/images.py`` and ``xcam/viz.py`` of git revision ``rev`` under ``dest``."""
    root = Path(__file__).resolve().parent.parent
    for name in ("xcam/images.py", "xcam/viz.py"):
        done = subprocess.run(
            ["git", "show", f"{rev}:{name}"], cwd=root, capture_output=True, check=True
        )
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(done.stdout)
    return dest


def _load_module(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _draw_new(kind: str, im, cam, size: tuple[int, int], png: Path, npy: Path) -> None:
    """The map resized a strip of rows at a time into ``npy``, drawn into the decoded image."""
    import xcam.viz

    xcam.viz.save_resized(cam, size, npy, clamp=kind == "heatmap")
    if kind == "heatmap":
        xcam.viz.overlay_into(im, cam)
    else:
        xcam.viz.attribution_into(im, cam)
    xcam.viz.save_png(im, png)


def _draw_old(kind: str, viz, im, cam, size: tuple[int, int], png: Path, npy: Path) -> None:
    """The pipeline's former in-memory path: the map and a new picture at the image's size."""
    import xcam.viz
    from xcam.files import atomic

    if kind == "heatmap":
        arr = viz.resize_map(cam, size)
        picture = viz.overlay(im, arr)
    else:
        arr = viz.resize_attribution(cam, size)
        picture = viz.attribution_image(arr)
    with atomic(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, arr.astype(np.float32))
    xcam.viz.save_png(picture, png)


def _peak(explain: Callable[[Path], None], image: Path, warm: Path) -> tuple[int, int, float]:
    """``explain(image)`` after a warm-up on ``warm``: ``(VmRSS before, VmHWM, seconds)``."""
    from xcam.bench.memory import status_bytes  # in the child: the parent never loads torch

    explain(warm)  # imports, lazy tables, the allocator's first arenas
    gc.collect()
    before = status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    explain(image)
    seconds = time.perf_counter() - t0
    return before, status_bytes("VmHWM"), seconds


def child(kind: str, variant: str, image: Path, warm: Path, out: Path, tree: Path | None) -> dict:
    """One arm, in this process: the figures as a dict (see the module docstring)."""
    import xcam
    import xcam.images
    import xcam.viz
    from xcam.models import load_model

    # the old arm's image loading and pictures from ``tree``; the model is always this one
    images = _load_module("before_images", tree / "xcam/images.py") if tree else xcam.images
    viz = _load_module("before_viz", tree / "xcam/viz.py") if tree else xcam.viz
    info = load_model("demo")
    method = (
        xcam.GradCAM(info.model, "block3") if kind == "heatmap" else xcam.GuidedBackprop(info.model)
    )

    def explain(path: Path) -> None:
        im = images.load_image(path, max_pixels=None)
        x = images.preprocess([im], info.input_size, info.mean, info.std)
        result = method(x)
        cam, size = result.maps[0], (im.height, im.width)
        png, npy = out / f"{path.stem}.png", out / f"{path.stem}.npy"
        if variant == "new":  # the image is no longer needed: drawn into
            _draw_new(kind, im, cam, size, png, npy)
        else:
            _draw_old(kind, viz, im, cam, size, png, npy)

    before, peak, seconds = _peak(explain, image, warm)
    from PIL import Image

    with Image.open(image) as im:
        pixels = im.width * im.height
    return {
        "kind": kind,
        "variant": variant,
        "tree": str(tree) if tree else "this",
        "pixels": pixels,
        "rss_before": before,
        "peak": peak,
        "growth": peak - before,
        "bytes_per_pixel": round((peak - before) / pixels, 2),
        "seconds": round(seconds, 2),
        "png_bytes": (out / f"{image.stem}.png").stat().st_size,
    }


def run_arm(
    kind: str,
    variant: str,
    image: Path,
    warm: Path,
    out: Path,
    tree: Path | None = None,
) -> dict:
    """:func:`child` in a fresh subprocess (its outputs under ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, variant, str(image), str(warm), str(out)]
    if tree:
        cmd += ["--before-tree", str(tree)]
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind}/{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(old_dir: Path, new_dir: Path, stem: str) -> dict:
    """Max differences between the two arms' outputs (.npy values, PNG channels), and how
    many pixels have a channel more than 1 off."""
    from PIL import Image

    a = np.load(old_dir / f"{stem}.npy", mmap_mode="r")
    b = np.load(new_dir / f"{stem}.npy", mmap_mode="r")
    npy = max(float(np.abs(a[i] - b[i]).max()) for i in range(len(a)))  # a row (channel) at a time
    with Image.open(old_dir / f"{stem}.png") as p, Image.open(new_dir / f"{stem}.png") as q:
        d = np.abs(np.asarray(p, dtype=np.int16) - np.asarray(q, dtype=np.int16)).max(axis=2)
    return {"npy_max_abs_diff": npy, "png_max_diff": int(d.max()), "png_off": int((d > 1).sum())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="6000x6000", help="WIDTHxHEIGHT of the large image")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument(
        "--before-rev",
        help="a git revision whose xcam/images.py and xcam/viz.py the old arm uses",
    )
    p.add_argument("--before-tree", type=Path, help=argparse.SUPPRESS)  # for the children
    p.add_argument("--out", type=Path, default=RESULTS / NAME)
    p.add_argument("--child", nargs=5, metavar=("KIND", "VARIANT", "IMAGE", "WARM", "OUT"))
    a = p.parse_args(argv)
    if a.child:
        kind, variant, image, warm, out = a.child
        row = child(kind, variant, Path(image), Path(warm), Path(out), a.before_tree)
        print(json.dumps(row))
        return
    if reason := can_reset_peak():
        sys.exit(f"can't measure peak memory: {reason}")
    width, height = (int(v) for v in a.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.before_rev:
            a.before_tree = checkout(a.before_rev, tmp / "before")
        image = make_image(tmp / "big.png", width, height)
        warm = make_image(tmp / "warm.png", 320, 240, seed=1)
        for kind in a.kinds:
            old = run_arm(kind, "old", image, warm, tmp / f"{kind}-old", a.before_tree)
            old["tree"] = a.before_rev or "this"
            new = run_arm(kind, "new", image, warm, tmp / f"{kind}-new")
            diff = compare(tmp / f"{kind}-old", tmp / f"{kind}-new", image.stem)
            rows += [old, {**new, **diff}]
            for r in (old, new):
                print(f"{kind:12} {r['variant']:4} {r['bytes_per_pixel']:7.2f} B/px", flush=True)
        png_size = image.stat().st_size
    command = "python benchmarks/large_image_memory.py" + (
        f" --before-rev {a.before_rev}" if a.before_rev else ""
    )
    if a.size != "6000x6000":
        command += f" --size {a.size}"
    env = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "image": f"{width}x{height} RGB PNG, {png_size} bytes",
        "command": command,
    }
    print(write_results(a.out, env, rows))


def write_results(out: Path, env: dict, rows: list[dict]) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    header = ["kind", "outputs", "peak growth MB", "bytes / source pixel", "seconds", "PNG MB"]
    header += ["npy max diff vs in-memory", "PNG max diff", "pixels > 1 off"]
    lines = [
        "# Peak memory of explaining one large image",
        "",
        f"{env['image']}, demo model (Grad-CAM on block3 / Guided Backprop), {env['date']}. "
        "Growth of the peak RSS (VmHWM) over the RSS before loading the image, in a fresh "
        "process after a warm-up; it includes the decoded image (Pillow keeps RGB in 4 "
        f"bytes a pixel). Reproduce: `{env['command']}`.",
        "",
        "The strips' values differ from one `F.interpolate` call by float32 rounding (the "
        "height and the width are resized in two calls); where a map value an ulp off lies "
        "at the edge of a colormap entry the pixel takes the next entry, off by up to alpha "
        "times the step between entries: a few pixels in a million.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for r in rows:
        into = "overlay_into" if r["kind"] == "heatmap" else "attribution_into"
        label = f"strips ({into})" if r["variant"] == "new" else "in memory"
        if r["variant"] == "old" and r["tree"] != "this":
            label += f" ({r['tree']})"
        cells = [
            r["kind"],
            label,
            f"{r['growth'] / 2**20:.0f}",
            f"{r['bytes_per_pixel']:.2f}",
            f"{r['seconds']:.1f}",
            f"{r['png_bytes'] / 2**20:.1f}",
            f"{r['npy_max_abs_diff']:.2g}" if "npy_max_abs_diff" in r else "",
            str(r["png_max_diff"]) if "png_max_diff" in r else "",
            str(r["png_off"]) if "png_off" in r else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    main()
