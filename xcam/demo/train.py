"""Train the demo model on synthetic shapes, on the CPU, in a few minutes.

    python -m xcam.demo.train            # writes weights.pt, model_card.json, samples/

Everything is seeded; the held-out set uses a seed the training set never sees.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xcam.demo import CLASSES, INPUT_SIZE, MEAN, STD, DemoNet
from xcam.demo.data import make_dataset, make_sample, to_tensor

HERE = Path(__file__).parent
TRAIN_SEED, HELDOUT_SEED, SAMPLE_SEED = 1, 2, 3


def evaluate(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    layer: str = "block3",
) -> dict[str, float]:
    """Held-out accuracy and Grad-CAM pointing game (map peak inside the object's mask)."""
    from xcam.methods.gradcam import GradCAM
    from xcam.quality import pointing_game

    model.eval()
    x, y = to_tensor(images), torch.from_numpy(labels)
    hits, correct = 0, 0
    cam = GradCAM(model, layer)
    for i in range(0, len(x), 250):
        res = cam(x[i : i + 250], targets=y[i : i + 250])
        correct += int((res.logits.argmax(1) == y[i : i + 250]).sum())
        hits += int(pointing_game(res.maps, torch.from_numpy(masks[i : i + 250])).sum())
    return {"accuracy": correct / len(x), "pointing_game": hits / len(x)}


def train(epochs: int, n_train: int, n_heldout: int, out: Path, threads: int) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    t0 = time.time()
    xi, yi, _ = make_dataset(n_train, TRAIN_SEED)
    hx, hy, hm = make_dataset(n_heldout, HELDOUT_SEED)
    x, y = to_tensor(xi), torch.from_numpy(yi)
    print(f"data: {n_train} train, {n_heldout} held-out in {time.time() - t0:.1f}s", flush=True)
    model = DemoNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((n_train + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train)
        total = 0.0
        for i in range(0, n_train, 128):
            idx = perm[i : i + 128]
            xb = x[idx]
            if torch.rand(()) < 0.5:  # shapes are symmetric under flips; cheap augmentation
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        stats = evaluate(model, hx[:500], hy[:500], hm[:500])
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.3f}, held-out acc "
            f"{stats['accuracy']:.3f}, pointing {stats['pointing_game']:.3f} "
            f"({time.time() - t0:.0f}s)",
            flush=True,
        )
    model.eval()
    final = evaluate(model, hx, hy, hm)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    card = {
        "architecture": "DemoNet: 3 conv stages (16/32/64 ch), GAP, Linear",
        "classes": CLASSES,
        "input_size": list(INPUT_SIZE),
        "mean": list(MEAN),
        "std": list(STD),
        "train": {"samples": n_train, "seed": TRAIN_SEED, "epochs": epochs},
        "heldout": {"samples": n_heldout, "seed": HELDOUT_SEED, **final},
        "pointing_game_layer": "block3",
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    write_samples(out / "samples")
    print(json.dumps(card["heldout"]))
    return card


def write_samples(folder: Path, per_class: int = 2, size: int = 128) -> None:
    """Sample PNGs for the demo and the docs, rendered at ``size``² (the model resizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SAMPLE_SEED)
    for k, name in enumerate(CLASSES):
        for j in range(per_class):
            s = make_sample(rng, size, label=k)
            Image.fromarray(s.image).save(folder / f"{name}_{j + 1}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train", type=int, default=12000)
    p.add_argument("--heldout", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args()
    train(a.epochs, a.train, a.heldout, a.out, a.threads)


if __name__ == "__main__":
    main()
