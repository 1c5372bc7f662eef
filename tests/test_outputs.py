"""Output files: created folders, no silent clobbering of another run, atomic writes,
batch jobs that report bad files and finish the good ones, --debug."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xcam.cli import main
from xcam.demo import sample_images
from xcam.files import atomic


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_images()[:2]:
        shutil.copy(p, folder / p.name)
    return folder


def _explain(images: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["explain", "demo", str(images), "-o", str(out), *extra])


def test_missing_output_folder_is_created(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "c"
    assert _explain(images, out).exit_code == 0 and (out / "predictions.json").is_file()


def test_another_run_is_not_clobbered_without_overwrite(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _explain(images, out).exit_code == 0
    before = (out / "predictions.json").read_text()
    again = _explain(images, out)  # the same job: replaces its own files
    assert again.exit_code == 0
    other = _explain(images, out, "--class", "1")  # a different job would replace them
    assert other.exit_code == 1 and "--overwrite" in other.output
    assert (out / "predictions.json").read_text() == before  # nothing was touched
    forced = _explain(images, out, "--class", "1", "--overwrite")
    assert forced.exit_code == 0
    assert json.loads((out / "predictions.json").read_text())["run"]["target"] == "1"


def test_foreign_files_are_not_clobbered(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stem = sorted(images.iterdir())[0].stem
    (out / f"{stem}_gradcam.png").write_bytes(b"mine")
    res = _explain(images, out)
    assert res.exit_code == 1 and "different run or by something else" in res.output
    assert (out / f"{stem}_gradcam.png").read_bytes() == b"mine"


def test_writes_are_atomic(tmp_path: Path) -> None:
    target = tmp_path / "map.npy"
    np.save(target, np.zeros(3))
    with pytest.raises(KeyboardInterrupt), atomic(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half a fi")
        raise KeyboardInterrupt
    assert np.load(target).tolist() == [0.0, 0.0, 0.0]  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["map.npy"]  # no temporary left
    with atomic(target) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ones(2))
    assert np.load(target).tolist() == [1.0, 1.0]


def test_an_interrupted_job_leaves_no_half_written_file(images, tmp_path, monkeypatch) -> None:
    import xcam.viz

    calls = {"n": 0}
    real = xcam.viz._resized_strips  # the .npy is written a strip of rows at a time

    def flaky(*args, **kwargs):
        calls["n"] += 1
        for strip in real(*args, **kwargs):
            yield strip  # written to the second .npy, then the job is interrupted
            if calls["n"] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(xcam.viz, "_resized_strips", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _explain_direct(images, out)
    names = sorted(p.name for p in out.iterdir())
    assert not any(n.endswith(".tmp") for n in names)
    for npy in out.glob("*.npy"):  # what exists is whole
        assert np.load(npy).ndim == 2


def _explain_direct(images: Path, out: Path) -> None:
    from xcam.images import find_images
    from xcam.methods.gradcam import GradCAM
    from xcam.models import load_model
    from xcam.pipeline import explain_files

    info = load_model("demo")
    explain_files(info, find_images([images]), GradCAM(info.model, "block3"), out)


def test_batch_job_reports_bad_files_and_finishes_the_good(images: Path, tmp_path: Path) -> None:
    (images / "empty.png").write_bytes(b"")
    (images / "text.jpg").write_text("hello")
    out = tmp_path / "out"
    res = _explain(images, out)
    assert res.exit_code == 1
    assert "empty.png" in res.output and "empty file" in res.output and "text.jpg" in res.output
    assert "Traceback" not in res.output
    report = json.loads((out / "predictions.json").read_text())
    assert len(report["images"]) == 2 and len(report["errors"]) == 2


def test_debug_shows_the_traceback_behind_an_error(images: Path, tmp_path: Path) -> None:
    args = ["explain", "demo", str(images), "-o", str(tmp_path / "o"), "--layer", "nosuch"]
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 1 and "Traceback" not in quiet.output
    loud = CliRunner().invoke(main, ["--debug", *args])
    assert (
        loud.exit_code == 1 and "Traceback" in loud.output and "LayerNotFoundError" in loud.output
    )
