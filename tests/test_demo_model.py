"""The bundled demo model: held-out accuracy and Grad-CAM localisation (pointing game)."""

from __future__ import annotations

import numpy as np
import torch

import xcam
from xcam.demo import CLASSES, INPUT_SIZE, model_card, sample_images
from xcam.demo.data import make_dataset, make_sample, to_tensor

FRESH_SEED = 1234  # neither the training (1) nor the card's held-out (2) seed


def test_generator_is_deterministic_and_masks_match() -> None:
    a = make_sample(np.random.default_rng(5))
    b = make_sample(np.random.default_rng(5))
    assert np.array_equal(a.image, b.image) and a.label == b.label
    assert a.image.shape == (64, 64, 3) and a.mask.shape == (64, 64)
    assert 0.01 < a.mask.mean() < 0.5


def test_accuracy_and_pointing_game(demo_model) -> None:
    images, labels, masks = make_dataset(400, FRESH_SEED)
    x, y = to_tensor(images), torch.from_numpy(labels)
    res = xcam.GradCAM(demo_model, "block3")(x, targets=y)
    accuracy = float((res.logits.argmax(1) == y).float().mean())
    peak = res.maps.flatten(1).argmax(1)
    w = res.maps.shape[-1]
    hits = torch.from_numpy(masks)[torch.arange(len(y)), peak // w, peak % w]
    pointing = float(hits.float().mean())
    print(f"demo model on {len(y)} fresh images: accuracy {accuracy:.3f}, pointing {pointing:.3f}")
    assert accuracy >= 0.9
    assert pointing >= 0.8


def test_card_and_samples() -> None:
    card = model_card()
    assert card["classes"] == CLASSES and card["input_size"] == list(INPUT_SIZE)
    assert card["heldout"]["accuracy"] >= 0.9
    samples = sample_images()
    assert len(samples) == 2 * len(CLASSES)
    assert {p.stem.rsplit("_", 1)[0] for p in samples} == set(CLASSES)


def test_samples_are_classified_correctly(demo_model) -> None:
    from xcam.demo import MEAN, STD
    from xcam.images import load_image, preprocess

    paths = sample_images()
    x = preprocess([load_image(p) for p in paths], INPUT_SIZE, MEAN, STD)
    with torch.no_grad():
        pred = demo_model(x).argmax(1).tolist()
    truth = [CLASSES.index(p.stem.rsplit("_", 1)[0]) for p in paths]
    assert sum(p == t for p, t in zip(pred, truth, strict=True)) >= len(paths) - 1
