"""Multi-label heads (issue 17, item 4): ``targets="present"`` explains every label the
model says is present, one map per (sample, label), and ``xcam explain --class present``
writes one overlay and map per label."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import importable
from PIL import Image
from torch import nn

import xcam

SOURCE = '''
import torch
from torch import nn


class MultiLabel(nn.Module):
    """Four independent labels (a chest X-ray's findings, say): conv features, then a
    sigmoid per label."""

    def __init__(self, final=None):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        self.final = final if final is not None else nn.Identity()

    def forward(self, x):
        return self.final(self.fc(torch.flatten(self.pool(self.features(x)), 1)))


def sigmoid_head():
    torch.manual_seed(0)
    model = MultiLabel(nn.Sigmoid())
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([2.0, -2.0, 0.3, -0.3]))
    return model.eval()


def logits_head():
    model = sigmoid_head()
    model.final = nn.Identity()
    return model


def nothing_present():
    model = sigmoid_head()
    with torch.no_grad():
        model.fc.bias.fill_(-50.0)
    return model
'''


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    with importable(tmp_path_factory.mktemp("ml"), "ml_heads", SOURCE) as folder:
        import ml_heads

        yield ml_heads, folder


def _x(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("factory", ["sigmoid_head", "logits_head"])
def test_every_present_label_gets_its_own_map(heads, factory) -> None:
    module, _ = heads
    model = getattr(module, factory)()
    x = _x()
    with torch.no_grad():
        out = model(x)
    # present: a probability >= 0.5, i.e. a logit >= 0 where the model gives logits
    present = out >= (0.5 if factory == "sigmoid_head" else 0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*saturates")  # the sigmoid head's note
        cam = xcam.GradCAM(model, "features")
        result = cam(x, targets="present")
    pairs = present.nonzero()
    assert 0 < len(pairs) < present.numel()  # some labels present, some not
    assert result.samples.tolist() == pairs[:, 0].tolist()
    assert result.targets.tolist() == pairs[:, 1].tolist()
    for row, (i, label) in enumerate(pairs.tolist()):
        alone = cam(x[i : i + 1], targets=label)
        assert torch.allclose(result.maps[row], alone.maps[0], atol=1e-6)
        assert torch.allclose(result.scores[row], alone.scores[0])


def test_present_on_a_single_output_is_its_positive_decision(heads) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    ).eval()
    x = _x(4, seed=2)
    with torch.no_grad():
        positive = (model(x)[:, 0] >= 0).nonzero()[:, 0]
    result = xcam.GradCAM(model, "0")(x, targets="present")
    assert result.samples.tolist() == positive.tolist()
    assert result.targets.tolist() == [1] * len(positive)  # 1: the positive decision
    assert torch.allclose(result.maps, xcam.GradCAM(model, "0")(x[positive], targets=1).maps)


def test_nothing_present_gives_no_rows_and_softmax_is_refused(heads) -> None:
    module, _ = heads
    model = module.logits_head()
    with torch.no_grad():
        model.fc.bias.fill_(-50.0)  # nothing is present
    result = xcam.GradCAM(model, "features")(_x(2), targets="present")
    assert len(result) == 0 and result.maps.shape == (0, 32, 32)
    assert result.samples.tolist() == [] and result.logits.shape == (0, 4)
    softmax = module.MultiLabel(nn.Softmax(dim=1)).eval()
    with (
        pytest.raises(xcam.TargetError, match=r"multi-label heads.*softmax"),
        pytest.warns(UserWarning),
    ):
        xcam.GradCAM(softmax, "features")(_x(2), targets="present")
    with pytest.raises(xcam.TargetError, match="'present'"):
        xcam.core.targets.resolve_targets(torch.zeros(2, 4), "present")


def test_the_cli_writes_a_map_per_present_label(heads, runner, tmp_path) -> None:
    from xcam.cli import main

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        noise = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(20 + i))
        Image.fromarray((noise * 255).byte().numpy()).save(images / f"im{i}.png")
    out = tmp_path / "out"
    args = ["explain", "ml_heads:sigmoid_head", str(images), "--input-size", "32"]
    args += ["--layer", "features", "--class", "present", "--out", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "predictions.json").read_text())
    rows = {r["stem"]: r for r in report["images"]}
    assert set(rows) == {"im0", "im1"}
    for stem, row in rows.items():
        assert row["target"] == "present"
        probs = {p["class"]: p["probability"] for p in row["predictions"]}
        present = sorted(k for k, p in probs.items() if p >= 0.5)
        assert [lab["class"] for lab in row["labels"]] == present and present
        for lab in row["labels"]:
            saved = np.load(out / lab["map"])
            assert saved.shape == (32, 32) and (out / lab["overlay"]).exists()
            assert lab["map"] == f"{stem}_{lab['class']}_gradcam.npy"
    # the same run again resumes; a file of this run's names it did not write is refused
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and "resuming: 2 of 2" in res.output, res.output
    first = rows["im0"]["labels"][0]["map"]
    other = tmp_path / "other"
    other.mkdir()
    (other / first).write_bytes(b"someone else's")
    res = runner.invoke(main, [*args[:-1], str(other)])
    assert res.exit_code == 1 and "written by a different run" in res.output
    assert (other / first).read_bytes() == b"someone else's"


def test_a_journal_row_whose_labels_name_files_outside_is_ignored(tmp_path) -> None:
    """A hand-edited or hostile journal never makes a run write or delete outside --out:
    a label's file names are checked like an image's."""
    from xcam.record import JOURNAL, Record

    good = {"overlay": "a_0_gradcam.png", "map": "a_0_gradcam.npy"}
    rows = [
        {"run": {"method": "gradcam"}},
        {"key": "k1", "stem": "a", "stamp": [1, 2], "labels": [good]},
        {"key": "k2", "stem": "b", "stamp": [1, 2], "labels": [{**good, "map": "../evil.npy"}]},
        {"key": "k3", "stem": "c", "stamp": [1, 2], "labels": "not a list"},
    ]
    (tmp_path / JOURNAL).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    record = Record.read(tmp_path)
    assert set(record.items) == {"k1"}
    assert record.files() == ["a_0_gradcam.npy", "a_0_gradcam.png"]


def test_an_image_with_no_label_present_is_listed_with_its_predictions(heads, runner, tmp_path):
    from xcam.cli import main

    noise = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(40))
    Image.fromarray((noise * 255).byte().numpy()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = ["explain", "ml_heads:nothing_present", str(tmp_path / "a.png"), "--input-size"]
    args += ["32", "--layer", "features", "--class", "present", "--out", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    row = json.loads((out / "predictions.json").read_text())["images"][0]
    assert row["labels"] == [] and len(row["predictions"]) == 4
    assert all(p["probability"] < 0.5 for p in row["predictions"])
    assert not list(out.glob("*.png")) and not list(out.glob("*.npy"))  # no map written
