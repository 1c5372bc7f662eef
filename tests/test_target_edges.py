"""Issue 12, targets as users bring them and the edges of exported files.

- A callable target over a multi-head model (head pose: yaw, pitch, roll) needed
  ``output=``, which selects one head; now it receives the whole output structure.
- A callable target on a ``--gradients`` file said the file had no gradients in its graph;
  ``output=1`` against a file exported with ``output=0`` said "the export and the eager
  model differ (relative error 2.2)".
- ``aug_smooth`` on a file with a fixed input size complained about an input the user never
  passed; ``backend="onnxruntime"`` left a ``ResourceWarning`` about its temporary folder.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import exporters
import xcam
from xcam.core.errors import NumericalError


class HeadPose(nn.Module):
    """A shared trunk and three regression heads: ``(yaw, pitch, roll)``, each ``[B, 1]``."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        torch.manual_seed(5)
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.yaw, self.pitch, self.roll = nn.Linear(8, 1), nn.Linear(8, 1), nn.Linear(8, 1)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        f = self.trunk(x).mean(dim=(2, 3))
        heads = (self.yaw(f), self.pitch(f), self.roll(f))
        return dict(zip(("yaw", "pitch", "roll"), heads, strict=True)) if self.as_dict else heads


class Summed(nn.Module):
    """The reference: one output, yaw + pitch + roll."""

    def __init__(self, model: HeadPose):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        heads = out.values() if isinstance(out, dict) else out
        return sum(heads)


X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def total(out) -> torch.Tensor:
    return out[0][:, 0] + out[1][:, 0] + out[2][:, 0]


@pytest.mark.parametrize(
    "name", ["gradcam", "scorecam", "ablationcam", "reciprocam", "guidedbackprop", "fullgrad"]
)
def test_a_callable_target_receives_the_whole_output_structure(name: str) -> None:
    model = HeadPose().eval()
    cls = xcam.get_method(name)
    args = ("trunk.3",) if cls.uses_layers else ()
    ref_args = ("model.trunk.3",) if cls.uses_layers else ()
    got = cls(model, *args)(X, targets=total)
    want = cls(Summed(model), *ref_args)(X, targets=lambda out: out[:, 0])
    assert torch.allclose(got.maps, want.maps, atol=1e-5), float((got.maps - want.maps).abs().max())
    assert torch.allclose(got.scores, want.scores, atol=1e-6)
    # the result's logits: every head's output, flattened and side by side
    assert torch.allclose(got.logits, torch.cat(model(X), dim=1))


def test_structure_for_dicts_and_per_sample_target_objects() -> None:
    model = HeadPose(as_dict=True).eval()
    cam = xcam.GradCAM(model, "trunk.3")
    got = cam(X, targets=lambda out: out["yaw"][:, 0] + out["pitch"][:, 0] + out["roll"][:, 0])
    want = xcam.GradCAM(Summed(model), "model.trunk.3")(X, targets=lambda out: out[:, 0])
    assert torch.allclose(got.maps, want.maps, atol=1e-5)
    # one function per sample: each gets its own sample's structure
    per_sample = cam(X, targets=[lambda o: o["yaw"][0], lambda o: o["roll"][0]])
    yaw = cam(X, targets=lambda o: o["yaw"][:, 0]).maps[0]
    roll = cam(X, targets=lambda o: o["roll"][:, 0]).maps[1]
    assert torch.allclose(per_sample.maps, torch.stack([yaw, roll]), atol=1e-5)
    # output= still selects one head, as before
    one = xcam.GradCAM(model, "trunk.3", output="pitch")(X, targets=lambda t: t[:, 0])
    assert torch.allclose(one.maps, cam(X, targets=lambda o: o["pitch"][:, 0]).maps, atol=1e-6)


def test_class_targets_on_a_structure_still_ask_for_output() -> None:
    with pytest.raises(xcam.TargetError, match="output=INDEX"):
        xcam.GradCAM(HeadPose().eval(), "trunk.3")(X)


class TwoOutputs(nn.Module):
    """Logits and an auxiliary head (as Inception / GoogLeNet return)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc, self.aux = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor):
        f = self.body(x).mean(dim=(2, 3))
        return self.fc(f), self.aux(f)


def test_a_callable_target_on_a_gradients_file_names_the_real_limit(tmp_path: Path) -> None:
    model = TwoOutputs().eval()
    path = tmp_path / "g.onnx"
    exporters.export(model, ["body.1"], X, path, gradients=True, output=0)
    with pytest.raises(xcam.XCamError) as e:
        xcam.GradCAM(xcam.load(path))(X, targets=lambda out: out[:, 1])
    message = str(e.value)
    assert "has none" not in message
    assert "top-1 class" in message and "--target-input" in message
    assert "backend=xcam.load" in message  # a callable target needs the eager model


def test_output_mismatch_with_the_file_is_named(tmp_path: Path) -> None:
    model = TwoOutputs().eval()
    path = tmp_path / "o.onnx"
    exporters.export(model, ["body.1"], X, path, output=0)
    backend = xcam.load(path)
    assert backend.metadata.output == 0
    with pytest.raises(xcam.XCamError, match=r"output=1.*exported with --output 0"):
        xcam.GradCAM(model, "body.1", backend=backend, output=1)
    adopted = xcam.GradCAM(model, "body.1", backend=backend)  # the file's output, no need to say
    want = xcam.GradCAM(model, "body.1", output=0)(X)
    assert torch.allclose(adopted(X).maps, want.maps, atol=1e-4)


def test_aug_smooth_on_a_fixed_size_file_uses_the_flips(tmp_path: Path) -> None:
    model = TwoOutputs().eval()
    path = tmp_path / "s.onnx"
    exporters.export(model, ["body.1"], X, path, gradients=True, output=0)
    cam = xcam.GradCAM(xcam.load(path), aug_smooth=True)
    with pytest.warns(UserWarning, match=r"fixed input size 16x16.*flipped"):
        got = cam(X)
    eager = xcam.GradCAM(model, "body.1", output=0)
    flips = torch.stack([eager(X).maps, eager(X.flip(-1)).maps.flip(-1)]).mean(0)
    want = xcam.core.ops.normalize(flips)[0]
    assert torch.allclose(got.maps, want, atol=1e-4)


def test_auto_export_leaves_no_resource_warning() -> None:
    model = TwoOutputs().eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cam = xcam.GradCAM(model, "body.1", backend="onnxruntime", output=0)
        cam(X)
        folder = Path(cam._tmp.name)
        assert folder.is_dir()
        del cam
        gc.collect()
    assert not folder.exists()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)], [
        str(w.message) for w in seen
    ]
    with xcam.GradCAM(model, "body.1", backend="onnxruntime", output=0) as cam:
        cam(X)
        folder = Path(cam._tmp.name)
    assert not folder.exists()  # closed on leaving the block


def test_a_non_spatial_layer_is_a_layer_type_error() -> None:
    """``xcam.GradCAM(model, "fc")``: an IndexError deep in the weighting rule before."""
    model = TwoOutputs().eval()
    for name in ("gradcam", "gradcam++", "eigencam", "layercam"):
        with pytest.raises(xcam.LayerTypeError, match=r"'fc' outputs a 2x4 tensor \(2-D\)"):
            xcam.get_method(name)(model, "fc", output=0)(X)


def test_eigen_smooth_on_an_overflow_is_a_numerical_error() -> None:
    model = TwoOutputs().eval()
    with torch.no_grad():
        model.body[0].weight.fill_(3e38)  # finite weights whose activations overflow
    with pytest.raises(NumericalError, match="not finite"):
        xcam.GradCAM(model, "body.1", output=0, eigen_smooth=True)(X)


def test_class_targets_on_a_file_that_does_not_say_its_classes(tmp_path: Path) -> None:
    """A file whose metadata has no class count: its logits give it (a one-column probe
    called a 4-class model a single-logit head)."""
    model = TwoOutputs().eval()
    path = tmp_path / "t.onnx"
    exporters.export(model, ["body.1"], X, path, gradients=True, target_input=True, output=0)
    backend = xcam.load(path)
    backend.metadata.num_classes = None
    got = xcam.GradCAM(backend)(X, targets=[2, 3])
    assert got.targets.tolist() == [2, 3]
    want = xcam.GradCAM(model, "body.1", output=0)(X, targets=[2, 3])
    assert torch.allclose(got.maps, want.maps, atol=1e-4)
    with pytest.raises(xcam.TargetError, match="out of range for 4 classes"):
        xcam.GradCAM(backend)(X, targets=4)


def test_parity_fails_on_non_finite_outputs(tmp_path: Path) -> None:
    """NaN weights passed the parity check ("max abs err 0.00e+00": NaN compares false)."""
    model = TwoOutputs().eval()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(exporters.ParityError, match="not finite"):
        exporters.export(model, ["body.1"], X, tmp_path / "n.onnx", output=0)
    assert not (tmp_path / "n.onnx").exists()


def test_score_cam_over_a_structure_with_a_constant_channel() -> None:
    """Score-CAM scores a constant channel by one forward of a blank input, repeated: a
    tuple output raised ``'tuple' object has no attribute 'expand'``."""
    model = HeadPose().eval()
    with torch.no_grad():
        model.trunk[2].weight[0].zero_()  # channel 0 of trunk.3: its bias alone, constant
    got = xcam.ScoreCAM(model, "trunk.3")(X, targets=total)
    want = xcam.ScoreCAM(Summed(model), "model.trunk.3")(X, targets=lambda out: out[:, 0])
    assert torch.allclose(got.maps, want.maps, atol=1e-5)


def test_a_target_callable_that_fails_says_what_it_was_given(tmp_path: Path) -> None:
    """A file exported with ``output=0`` gives a callable its one head: a lambda written for
    the whole tuple failed with a bare IndexError. It still raises its own exception (the
    caller's code), with a note of what xcam gave it."""
    model = HeadPose().eval()
    path = tmp_path / "h.onnx"
    exporters.export(model, ["trunk.3"], X, path, output=0)
    cam = xcam.GradCAM(model, "trunk.3", backend=xcam.load(path))
    with pytest.raises(IndexError) as e:
        cam(X, targets=total)
    assert any("Tensor[2, 1]" in note for note in e.value.__notes__)


def test_lite_names_an_input_size_the_file_does_not_take(tmp_path: Path) -> None:
    """ONNX Runtime's raw INVALID_ARGUMENT before: the main library's InputError now."""
    from xcam.lite import OnnxExplainer

    model = TwoOutputs().eval()
    path = tmp_path / "f.onnx"
    exporters.export(model, ["body.1"], X, path, gradients=True, output=0)
    small = X[:, :, :8, :8].numpy()
    with pytest.raises(xcam.InputError, match=r"exported for input \?x3x16x16.*dimension 2"):
        OnnxExplainer(path)(small)
    with pytest.raises(xcam.InputError, match=r"exported for input \?x3x16x16.*dimension 2"):
        xcam.GradCAM(xcam.load(path))(torch.from_numpy(small))
