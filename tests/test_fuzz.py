"""Property-based tests of the public entry points: whatever the input shape, dtype, batch,
target or image bytes, only xcam's documented errors escape, and maps are finite in [0, 1]."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import xcam
from xcam.core.errors import XCamError
from xcam.images import load_image

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


MODEL = Tiny().eval()
DTYPES = [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.bool]


@st.composite
def inputs(draw) -> torch.Tensor:
    dims = draw(st.integers(2, 5))
    shape = [draw(st.integers(0 if i == 0 else 1, 3 if i == 0 else 12)) for i in range(dims)]
    if dims == 4 and draw(st.booleans()):
        shape[1] = 3  # mostly well-formed, so the maps get checked too
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.rand(*shape) * draw(st.sampled_from([1.0, 255.0, 1e4]))
    if dtype.is_floating_point and draw(st.integers(0, 9)) == 0:
        x.view(-1)[:1] = draw(st.sampled_from([float("nan"), float("inf")]))
    return x.to(dtype)


def _bad_callable(y: torch.Tensor) -> torch.Tensor:
    return y  # [B, 5], not one score per sample


targets = st.one_of(
    st.none(),
    st.integers(-2, 6),
    st.lists(st.integers(-1, 5), max_size=4),
    st.sampled_from(["positive", "cat", _bad_callable, lambda y: y[:, 0] - y[:, 1]]),
)


@SETTINGS
@given(x=inputs(), target=targets, name=st.sampled_from(["gradcam", "scorecam", "layercam"]))
def test_methods_raise_only_documented_errors(x, target, name) -> None:
    method = xcam.get_method(name)(MODEL, "body")
    try:
        result = method(x, targets=target)
    except XCamError:
        return
    assert result.maps.shape == (x.shape[0], *x.shape[-2:])
    assert torch.isfinite(result.maps).all()
    assert float(result.maps.min()) >= 0 and float(result.maps.max()) <= 1


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


@SETTINGS
@given(data=st.data())
def test_image_bytes_give_an_image_or_an_input_error(png_bytes, data) -> None:
    kind = data.draw(st.sampled_from(["random", "truncated", "flipped"]))
    if kind == "random":
        raw = data.draw(st.binary(max_size=200))
    elif kind == "truncated":
        raw = png_bytes[: data.draw(st.integers(0, len(png_bytes)))]
    else:
        i = data.draw(st.integers(0, len(png_bytes) - 1))
        raw = png_bytes[:i] + bytes([png_bytes[i] ^ 0xFF]) + png_bytes[i + 1 :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.png"
        path.write_bytes(raw)
        try:
            im = load_image(path)
        except XCamError as e:
            assert str(path) in str(e)
            return
        assert im.mode == "RGB" and min(im.size) >= 1
