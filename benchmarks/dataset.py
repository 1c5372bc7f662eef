"""Explaining a dataset, whole jobs timed as a user runs them (each a fresh process).

Arms, side by side, in rotating order, each round on fresh output folders:

- ``floor``: decode + preprocess + plain ONNX Runtime inference of the same model, batch 8,
  nothing written (numpy, Pillow and onnxruntime only);
- ``in-graph``: ``xcam explain r50_cam.onnx IMAGES --out O`` (the file exported with
  ``--gradients``: no torch); ``in-graph --no-overlays``: maps and records only;
- ``eager``: ``xcam explain torchvision:resnet50 --weights r50.pth IMAGES --layer layer4``;
- ``peer loop``: the usual hand-written pytorch-grad-cam script writing the same overlay PNG
  and ``.npy`` per image;
- ``ray``: the in-graph job with ``--engine ray`` at 1 and 2 workers (a local cluster the
  command starts) against the embedded engine, on ``--ray-images`` images;
- memory: peak RSS of the in-graph job (the demo model's file, overlays on) at 1k and 10k
  images.

Results: ``results/dataset.{json,md}``. Run from the repository root:
``.venv/bin/python benchmarks/dataset.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
PY = sys.executable
XCAM = [PY, "-m", "xcam.cli"]

FLOOR = r"""
import sys
from pathlib import Path
import numpy as np, onnxruntime as ort
from PIL import Image
folder, model, batch = Path(sys.argv[1]), sys.argv[2], 8
providers = sys.argv[3].split(",")
mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
sess = ort.InferenceSession(model, providers=providers)
name = sess.get_inputs()[0].name
paths = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
for i in range(0, len(paths), batch):
    xs = []
    for p in paths[i : i + batch]:
        im = Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)
        xs.append((np.asarray(im, np.float32).transpose(2, 0, 1) / 255 - mean) / std)
    sess.run(None, {name: np.stack(xs).astype(np.float32)})
"""

PEER = r"""
import sys
from pathlib import Path
import numpy as np, torch, torchvision, cv2
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
folder, weights, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
device = sys.argv[4]
out.mkdir(parents=True, exist_ok=True)
model = torchvision.models.resnet50()
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval().to(device)
mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
paths = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
with GradCAM(model=model, target_layers=[model.layer4]) as cam:
    for i in range(0, len(paths), 8):
        chunk = paths[i : i + 8]
        images = [Image.open(p).convert("RGB") for p in chunk]
        x = torch.stack([
            (torch.from_numpy(np.asarray(im.resize((224, 224), Image.BILINEAR), np.float32)
             .transpose(2, 0, 1).copy()) / 255 - mean) / std for im in images])
        maps = cam(input_tensor=x.to(device), targets=None)
        for p, im, m in zip(chunk, images, maps):
            full = cv2.resize(m, im.size)
            np.save(out / f"{p.stem}_gradcam.npy", full.astype(np.float32))
            rgb = np.asarray(im, np.float32) / 255
            shown = show_cam_on_image(rgb, full, use_rgb=True)
            Image.fromarray(shown).save(out / f"{p.stem}_gradcam.png")
"""

MEASURED = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - t
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)
if done.returncode:
    sys.stderr.write(done.stderr.decode(errors="replace")[-2000:])
"""


def make_images(folder: Path, n: int, sizes: tuple[int, int], seed: int) -> Path:
    """``n`` JPEGs of ``sizes[0]``–``sizes[1]`` px sides: smooth colour fields with shapes
    (compress like photos, unlike noise)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.random(3)[:, None, None] * 180 + 40 * np.stack([yy, xx, yy * xx])
        im = Image.fromarray(base.transpose(1, 2, 0).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


def models(cache: Path) -> dict[str, Path]:
    """Seeded resnet50: its state dict, its plain ONNX file and the in-graph file."""
    import torch
    import torchvision

    import exporters
    from xcam.bench import export_plain

    cache.mkdir(parents=True, exist_ok=True)
    files = {
        k: cache / n
        for k, n in (("pth", "r50.pth"), ("plain", "r50.onnx"), ("cam", "r50_cam.onnx"))
    }
    if all(p.exists() for p in files.values()):
        return files
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    torch.save(model.state_dict(), files["pth"])
    example = torch.randn(2, 3, 224, 224)
    export_plain(model, example, files["plain"])
    exporters.export(model, ["layer4"], example, files["cam"], gradients=True)
    return files


def demo_file(cache: Path) -> Path:
    """The demo model exported with in-graph gradients (the memory arm's model)."""
    import torch

    import exporters
    from xcam.demo import load_demo_model
    from xcam.models import load_model

    path = cache / "demo_cam.onnx"
    if not path.exists():
        info = load_model("demo")
        exporters.export(
            load_demo_model(),
            ["block3"],
            torch.rand(2, 3, 64, 64),
            path,
            gradients=True,
            mean=info.mean,
            std=info.std,
        )
    return path


def run(cmd: list[str], out: Path | None = None) -> dict[str, float]:
    """Wall time (s) and peak RSS (MiB) of ``cmd`` in a fresh process; ``out`` removed first."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([PY, "-c", MEASURED, *cmd], capture_output=True, text=True)
    wall, rss, code = done.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} … failed (exit {code}):\n{done.stderr}")
    return {"s": float(wall), "rss_mib": int(rss) / 1024}


def rounds(arms: dict[str, tuple[list[str], Path | None]], n: int) -> dict[str, dict]:
    """Each arm ``n`` times in rotating order; per arm the fastest run and every time."""
    times: dict[str, list[dict]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(n):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(run(*arms[k]))
            print(f"  {k}: {times[k][-1]['s']:.2f} s", file=sys.stderr)
    return {
        k: {
            "s": min(t["s"] for t in v),
            "runs": [t["s"] for t in v],
            "rss_mib": max(t["rss_mib"] for t in v),
        }
        for k, v in times.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--ray-images", type=int, default=500)
    p.add_argument("--memory", default="1000,10000", help="image counts of the memory arm")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: peer,ray,memory")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "xcam-dataset")
    p.add_argument("--out", type=Path, default=RESULTS / "dataset")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    cache = args.cache
    files = models(cache / "models")
    imgs = make_images(cache / f"imgs{args.images}", args.images, (256, 320), 0)
    o = cache / "out"
    dev = ["--device", args.device]
    cpu = "CPUExecutionProvider"
    providers = f"CUDAExecutionProvider,{cpu}" if args.device == "cuda" else cpu
    cam = [*XCAM, "explain", str(files["cam"]), str(imgs), "--out", str(o), *dev]
    eager = [*XCAM, "explain", "torchvision:resnet50", "--weights", str(files["pth"])]
    arms = {
        "floor": ([PY, "-c", FLOOR, str(imgs), str(files["plain"]), providers], None),
        "in-graph": (cam, o),
        "in-graph --no-overlays": ([*cam, "--no-overlays"], o),
        "eager": ([*eager, str(imgs), "--layer", "layer4", "--out", str(o), *dev], o),
    }
    if "peer" not in skip:
        peer = [PY, "-c", PEER, str(imgs), str(files["pth"]), str(o), args.device]
        arms["peer loop (pytorch-grad-cam)"] = (peer, o)
    print(f"{args.images} images, {args.rounds} rounds", file=sys.stderr)
    jobs = rounds(arms, args.rounds)
    result: dict = {
        "env": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d"),
        },
        "images": args.images,
        "jobs": jobs,
    }
    floor = jobs["floor"]["s"]
    ratios = {
        "in-graph / floor (goal ≤ 1.3)": jobs["in-graph"]["s"] / floor,
        "in-graph --no-overlays / floor (goal ≤ 1.1)": jobs["in-graph --no-overlays"]["s"] / floor,
    }
    if "peer loop (pytorch-grad-cam)" in jobs:
        peer = jobs["peer loop (pytorch-grad-cam)"]["s"]
        ratios["peer loop / eager (goal ≥ 3)"] = peer / jobs["eager"]["s"]
        ratios["peer loop / in-graph (goal ≥ 5)"] = peer / jobs["in-graph"]["s"]
    if "ray" not in skip:
        many = make_images(cache / f"imgs{args.ray_images}", args.ray_images, (256, 320), 1)
        cmd = [*XCAM, "explain", str(files["cam"]), str(many), "--out", str(o), *dev]
        ray_arms = {
            "embedded": (cmd, o),
            "ray, 1 worker": ([*cmd, "--engine", "ray", "--concurrency", "1"], o),
            "ray, 2 workers": ([*cmd, "--engine", "ray", "--concurrency", "2"], o),
        }
        print(f"ray: {args.ray_images} images", file=sys.stderr)
        ray = rounds(ray_arms, 1)
        for v in ray.values():
            v["images_per_s"] = args.ray_images / v["s"]
        result["ray"] = {"images": args.ray_images, "jobs": ray}
        ratios["ray 2 workers / embedded (goal ≤ 1.3)"] = (
            ray["ray, 2 workers"]["s"] / ray["embedded"]["s"]
        )
    if "memory" not in skip:
        demo = demo_file(cache / "models")
        memory = {}
        for n in (int(v) for v in args.memory.split(",")):
            folder = make_images(cache / f"small{n}", n, (96, 128), 2)
            print(f"memory: {n} images", file=sys.stderr)
            memory[n] = run([*XCAM, "explain", str(demo), str(folder), "--out", str(o)], o)
        result["memory"] = memory
        counts = sorted(memory)
        ratios[f"peak RSS {counts[-1]} / {counts[0]} images (goal: flat)"] = (
            memory[counts[-1]]["rss_mib"] / memory[counts[0]]["rss_mib"]
        )
    result["ratios"] = ratios
    shutil.rmtree(o, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        "# Explaining a dataset: whole jobs on this machine",
        "",
        f"{r['images']} JPEGs of 256–320 px, torchvision resnet50 (seeded weights), layer4, "
        f"batch 8, {r['env']['cpus']} CPUs, device {r['env'].get('device', 'cpu')}, "
        f"{r['env']['date']}; each job a fresh process, the fastest of its rounds "
        "(`benchmarks/dataset.py`). CUDA: `benchmarks/gpu_check.sh` runs this with "
        "`--device cuda` where a GPU is lent (`results/dataset_cuda.md`).",
        "",
        "| job | wall time (s) | runs (s) | peak RSS (MiB) |",
        "| --- | --- | --- | --- |",
    ]
    for k, v in r["jobs"].items():
        runs = ", ".join(f"{t:.2f}" for t in v["runs"])
        lines.append(f"| {k} | {v['s']:.2f} | {runs} | {v['rss_mib']:.0f} |")
    if "ray" in r:
        lines += [
            "",
            f"Ray Data on {r['ray']['images']} images (the in-graph file, overlays "
            "on; a local cluster started by each command, its start-up included):",
            "",
            "| engine | wall time (s) | images/s |",
            "| --- | --- | --- |",
        ]
        for k, v in r["ray"]["jobs"].items():
            lines.append(f"| {k} | {v['s']:.2f} | {v['images_per_s']:.1f} |")
    if "memory" in r:
        lines += [
            "",
            "Peak RSS of the in-graph job (the demo model's file, overlays on, 96–128 px JPEGs):",
            "",
            "| images | wall time (s) | peak RSS (MiB) |",
            "| --- | --- | --- |",
        ]
        for n, v in r["memory"].items():
            lines.append(f"| {n} | {v['s']:.1f} | {v['rss_mib']:.0f} |")
    lines += ["", "| ratio | measured |", "| --- | --- |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
