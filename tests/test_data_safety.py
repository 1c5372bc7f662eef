"""Your files are never lost or mixed: temp files, failed exports, one run per folder, the run
record, resuming after an interrupt, duplicate names, hostile metadata (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import exporters
import xcam
from xcam.cli import main
from xcam.core.errors import ModelSpecError
from xcam.demo import sample_images
from xcam.files import atomic, locked_folder

XCAM = [sys.executable, "-m", "xcam"]


def _explain(images, out: Path, *extra: str):
    args = [str(i) for i in (images if isinstance(images, list) else [images])]
    return CliRunner().invoke(main, ["explain", "demo", *args, "-o", str(out), *extra])


def _summary(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- temporary files -------------------------------------------------------------------------


def test_temp_files_are_unpredictable_and_never_follow_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    # the names the old code used (.<name>.<pid>.tmp), planted as links to the victim
    for pid in {os.getpid(), os.getpid() + 1}:
        (out / f".map.npy.{pid}.tmp").symlink_to(victim)
    (out / "map.npy").symlink_to(victim)  # and the final path itself
    with atomic(out / "map.npy") as tmp, open(tmp, "wb") as f:
        assert not tmp.is_symlink() and tmp.name.startswith(".map.npy.")
        np.save(f, np.arange(3))
    assert victim.read_text() == "precious"
    assert not (out / "map.npy").is_symlink() and np.load(out / "map.npy").tolist() == [0, 1, 2]
    assert oct((out / "map.npy").stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's mode


def test_a_planted_link_among_the_outputs_is_not_written_through(images, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    stem = sorted(images.iterdir())[0].stem
    (out / f"{stem}_gradcam.npy").symlink_to(victim)
    assert _explain(images, out).exit_code == 1  # someone else's file: refused
    assert _explain(images, out, "--overwrite").exit_code == 0
    assert victim.read_text() == "precious"
    assert np.load(out / f"{stem}_gradcam.npy").ndim == 2


@pytest.mark.parametrize("length", [240, 251])
def test_very_long_image_names(tmp_path: Path, length: int) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = "x" * (length - 4) + ".png"
    shutil.copy(sample_images()[0], folder / name)
    out = tmp_path / "out"
    res = _explain(folder, out)
    assert res.exit_code == 0, res.output
    item = _summary(out)["images"][0]
    assert (out / item["overlay"]).is_file() and (out / item["map"]).is_file()
    assert len(item["overlay"].encode()) <= 255
    assert not list(out.glob("*.tmp"))


# --- exports ---------------------------------------------------------------------------------


class DriftingNet(nn.Module):
    """Adds the number of calls so far to its logits: an export records one value, eager
    moves on, so the parity check fails."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a = torch.relu(self.conv(x))
        return self.fc(a.mean(dim=(2, 3))) + float(self.calls)


def drifting_net() -> nn.Module:
    return DriftingNet().eval()


@pytest.mark.parametrize("gradients", [False, True])
def test_a_failed_export_leaves_the_good_file_untouched(tmp_path, demo_model, gradients) -> None:
    good = tmp_path / "good.onnx"
    exporters.export(demo_model, ["block3"], torch.rand(1, 3, 64, 64), good)
    before = _snapshot(tmp_path)
    with pytest.raises(exporters.ParityError):
        exporters.export(
            drifting_net(), ["conv"], torch.rand(1, 3, 16, 16), good, gradients=gradients
        )
    assert _snapshot(tmp_path) == before  # the old file whole, nothing new left behind
    assert [p.name for p in tmp_path.iterdir()] == ["good.onnx"]
    assert xcam.load(good).layer_names == ["block3"]


def test_a_failed_export_on_the_command_line(tmp_path) -> None:
    good = tmp_path / "good.onnx"
    runner = CliRunner()
    assert runner.invoke(main, ["export", "demo", "--out", str(good)]).exit_code == 0
    before = good.read_bytes()
    spec = f"{Path(__file__).stem}:drifting_net"
    args = ["export", spec, "--layer", "conv", "--input-size", "16", "--out", str(good)]
    for extra in ([], ["--gradients"]):
        res = runner.invoke(main, [*args, *extra])
        assert res.exit_code == 1 and "does not match eager" in res.output, res.output
        assert good.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["good.onnx"]


# --- one run per folder ----------------------------------------------------------------------


def test_a_second_run_on_a_locked_folder_is_refused_or_waits(images, tmp_path) -> None:
    out = tmp_path / "out"
    with locked_folder(out):
        res = _explain(images, out)
        assert res.exit_code == 1 and "another xcam run" in res.output and "--wait" in res.output
    assert not (out / "predictions.json").exists()
    held = threading.Event()

    def hold() -> None:  # another writer, in another thread, for one second
        with locked_folder(out):
            held.set()
            time.sleep(1.0)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    started = time.monotonic()
    res = _explain(images, out, "--wait")
    thread.join()
    assert res.exit_code == 0, res.output
    assert time.monotonic() - started >= 0.9  # it waited for the holder


@pytest.mark.slow
def test_two_runs_into_one_folder_at_once_never_mix(images, tmp_path) -> None:
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [*XCAM, "explain", "demo", str(images), "-o", str(out), "--class", str(c)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in (0, 1)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outputs
    loser = outputs[codes.index(1)]
    assert "another xcam run" in loser or "different run" in loser
    winner = codes.index(0)
    summary = _summary(out)
    assert summary["complete"] and len(summary["images"]) == 3
    assert {i["target"] for i in summary["images"]} == {winner}  # all from the one run
    for item in summary["images"]:
        assert (out / item["map"]).is_file()


# --- the run record --------------------------------------------------------------------------


@pytest.fixture()
def other_weights(tmp_path: Path, demo_model) -> Path:
    state = {k: v.clone() for k, v in demo_model.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] += 0.01
    path = tmp_path / "other.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "option",
    [
        ["--aug-smooth"],
        ["--eigen-smooth"],
        ["--backend", "onnxruntime"],
        ["--weights", "OTHER"],
        ["--alpha", "0.3"],
        ["--colormap", "viridis"],
        ["--input-size", "48"],
        ["--layer", "block2"],
    ],
    ids=lambda o: o[0],
)
def test_every_option_that_changes_an_output_is_part_of_the_run(
    images, tmp_path, other_weights, option
) -> None:
    out = tmp_path / "out"
    assert _explain(images, out).exit_code == 0
    before = _snapshot(out)
    option = [str(other_weights) if o == "OTHER" else o for o in option]
    res = _explain(images, out, *option)
    assert res.exit_code == 1 and "different run" in res.output and "--overwrite" in res.output
    assert _snapshot(out) == before  # nothing touched


def test_the_same_weights_in_another_file_are_the_same_run(images, tmp_path, demo_model) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(demo_model.state_dict(), a)
    shutil.copy(a, b)
    out = tmp_path / "out"
    assert _explain(images, out, "--weights", str(a)).exit_code == 0
    res = _explain(images, out, "--weights", str(b))
    assert res.exit_code == 0 and "3 already there" in res.output


def test_a_run_over_some_images_keeps_the_others(images, tmp_path) -> None:
    out = tmp_path / "out"
    assert _explain(images, out).exit_code == 0
    first = sorted(images.iterdir())[0]
    res = _explain(first, out)
    assert res.exit_code == 0, res.output
    summary = _summary(out)
    assert len(summary["images"]) == 3 and summary["complete"]
    assert all((out / i["map"]).is_file() for i in summary["images"])
    # a changed image is explained again; the others are kept
    shutil.copy(sample_images()[5], first)
    res = _explain(images, out)
    assert res.exit_code == 0 and "wrote 1 overlay" in res.output and "2 already" in res.output


def test_overwrite_replaces_the_previous_run_and_its_files(images, tmp_path) -> None:
    out = tmp_path / "out"
    assert _explain(images, out).exit_code == 0
    assert _explain(images, out, "--method", "layercam", "--overwrite").exit_code == 0
    assert not list(out.glob("*_gradcam.*"))  # the previous run's files went with its record
    assert len(list(out.glob("*_layercam.npy"))) == 3
    assert _summary(out)["method"] == "layercam"


def test_an_interrupted_run_resumes_where_it_stopped(images, tmp_path, monkeypatch) -> None:
    import xcam.pipeline.job

    out = tmp_path / "out"
    real = xcam.pipeline.job.write_item
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(xcam.pipeline.job, "write_item", interrupted)
    res = _explain(images, out, "--batch-size", "1")
    assert res.exit_code != 0
    monkeypatch.undo()
    summary = _summary(out)  # written on the way out
    assert not summary["complete"] and len(summary["images"]) == 1
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    res = _explain(images, out, "--batch-size", "1")  # the identical command
    assert res.exit_code == 0 and "resuming: 1 of 3" in res.output, res.output
    summary = _summary(out)
    assert summary["complete"] and len(summary["images"]) == 3


@pytest.mark.slow
def test_sigterm_cleans_up_and_the_command_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        shutil.copy(sample_images()[i % 8], folder / f"img{i:02d}.png")
    out = tmp_path / "out"
    cmd = [*XCAM, "explain", "demo", str(folder), "-o", str(out), "--batch-size", "1"]
    cmd += ["--aug-smooth"]  # slower per image: time to be interrupted
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = out / "predictions.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count('"overlay"') >= 2:
            break  # two images finished
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert left == []
    summary = _summary(out)
    done = len(summary["images"])
    assert not summary["complete"] and 2 <= done < 40
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {done} of 40" in res.stderr
    assert _summary(out)["complete"] and len(_summary(out)["images"]) == 40


# --- the same image, the same name -----------------------------------------------------------


def test_the_same_image_given_twice_is_explained_once(images, tmp_path) -> None:
    first = sorted(images.iterdir())[0]
    out = tmp_path / "out"
    res = _explain([first, first, images / ".." / images.name / first.name], out)
    assert res.exit_code == 0 and "given more than once" in res.output
    assert len(_summary(out)["images"]) == 1 and len(list(out.glob("*.npy"))) == 1


def test_two_images_with_one_name_get_two_outputs(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, src in ((a, sample_images()[0]), (b, sample_images()[4])):
        folder.mkdir()
        shutil.copy(src, folder / "same.png")
    out = tmp_path / "out"
    assert _explain([a, b], out).exit_code == 0
    items = _summary(out)["images"]
    assert len({i["map"] for i in items}) == 2
    by_image = {Path(i["image"]).parent.name: np.load(out / i["map"]) for i in items}
    assert not np.array_equal(by_image["a"], by_image["b"])
    # re-run in the other order: each image keeps its own files
    assert _explain([b, a], out).exit_code == 0
    again = {Path(i["image"]).parent.name: i["map"] for i in _summary(out)["images"]}
    assert again == {Path(i["image"]).parent.name: i["map"] for i in items}


def test_filters_with_two_images_of_one_name(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, src in ((a, sample_images()[0]), (b, sample_images()[4])):
        folder.mkdir()
        shutil.copy(src, folder / "same.png")
    out = tmp_path / "out"
    args = ["filters", "demo", "--layer", "block1", "-o", str(out), "-i", str(a), "-i", str(b)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    features = sorted(p.name for p in out.glob("features_*.png"))
    assert features == ["features_block1_same.png", "features_block1_same_2.png"]
    assert (out / features[0]).read_bytes() != (out / features[1]).read_bytes()


# --- hostile metadata ------------------------------------------------------------------------


def _with_metadata(src: Path, dst: Path, **changes) -> Path:
    model = onnx.load(str(src))
    entry = next(p for p in model.metadata_props if p.key == "xcam")
    meta = json.loads(entry.value)
    meta.update(changes)
    entry.value = json.dumps(meta)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory, demo_model) -> Path:
    path = tmp_path_factory.mktemp("m") / "demo.onnx"
    exporters.export(demo_model, ["block3"], torch.rand(1, 3, 64, 64), path)
    return path


def test_metadata_must_match_the_graph(demo_onnx, tmp_path) -> None:
    evil = _with_metadata(demo_onnx, tmp_path / "evil.onnx", input_shape=[None, 3, 100000, 100000])
    with pytest.raises(ModelSpecError, match=r"graph takes \?x3x64x64"):
        xcam.load(evil)
    args = ["explain", str(evil), str(sample_images()[0]), "-o", str(tmp_path / "o")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "graph takes" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "shape,message",
    [
        ([None, 3, 100000, 100000], "above the limit"),
        ([None, 3, None], "not \\[B, C, H, W\\]"),
        ([None, 3, "64", 64], "non-integers"),
        ([None, 3, 0, 64], "below 1"),
    ],
)
def test_absurd_sizes_are_refused(demo_model, tmp_path, shape, message) -> None:
    path = tmp_path / "dyn.onnx"
    exporters.export(
        demo_model, ["block3"], torch.rand(1, 3, 64, 64), path, dynamic_spatial=True, check=False
    )
    evil = _with_metadata(path, tmp_path / "evil.onnx", input_shape=shape)
    with pytest.raises(ModelSpecError, match=message):
        xcam.load(evil)


def test_an_absurd_input_size_on_the_command_line(tmp_path) -> None:
    res = _explain(sample_images()[0], tmp_path / "o", "--input-size", "100000")
    assert res.exit_code == 2 and "largest side" in res.output


def test_a_tampered_record_never_reaches_outside_the_folder(images, tmp_path) -> None:
    out = tmp_path / "out"
    assert _explain(images, out).exit_code == 0
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    journal = out / "predictions.jsonl"
    lines = journal.read_text().splitlines()
    row = json.loads(lines[1])
    row.update(overlay="../victim.png", map=str(victim), stem="../victim")
    journal.write_text("\n".join([lines[0], json.dumps(row), "not json", "[1, 2]", *lines[2:]]))
    # --overwrite removes the previous run's files: only those inside the folder
    res = _explain(images, out, "--class", "1", "--overwrite")
    assert res.exit_code == 0, res.output
    assert victim.read_bytes() == b"precious"
    assert len(_summary(out)["images"]) == 3


def test_hidden_image_names_resume_like_any_other(tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(sample_images()[0], folder / ".hidden.png")
    out = tmp_path / "out"
    assert _explain(folder, out).exit_code == 0
    res = _explain(folder, out)
    assert res.exit_code == 0 and "1 already there" in res.output, res.output


def test_an_interrupt_between_the_two_files_still_resumes(images, tmp_path, monkeypatch) -> None:
    """The review's case: Ctrl-C after an image's .npy and before its .png left a file the
    record didn't list, and the identical command called it someone else's."""
    import xcam.viz

    out = tmp_path / "out"
    calls = {"n": 0}
    real = xcam.viz.save_png

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second image: its .npy is written, its .png is not
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(xcam.viz, "save_png", interrupted)
    assert _explain(images, out, "--batch-size", "1").exit_code != 0
    monkeypatch.undo()
    assert len(list(out.glob("*.npy"))) == 2 and len(list(out.glob("*.png"))) == 1
    res = _explain(images, out, "--batch-size", "1")
    assert res.exit_code == 0 and "resuming: 1 of 3" in res.output, res.output
    assert _summary(out)["complete"] and len(_summary(out)["images"]) == 3


def test_a_failed_read_keeps_the_image_files_owned(images, tmp_path) -> None:
    out = tmp_path / "out"
    assert _explain(images, out).exit_code == 0
    first = sorted(images.iterdir())[0]
    good = first.read_bytes()
    first.write_bytes(b"not an image")
    assert _explain(images, out).exit_code == 1  # reported, the others kept
    first.write_bytes(good)
    res = _explain(images, out)  # the same run again: its old files are still its own
    assert res.exit_code == 0, res.output
    assert len(_summary(out)["images"]) == 3
    assert _explain(images, out, "--method", "layercam", "--overwrite").exit_code == 0
    assert sorted(p.name.split("_")[-1] for p in out.glob("*.npy")) == ["layercam.npy"] * 3


@pytest.mark.parametrize("first_line", ['{"run": 5}', "null", "\udcff"])
def test_an_unreadable_record_is_not_replaced_unasked(images, tmp_path, first_line) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_bytes(first_line.encode("utf-8", "surrogateescape"))
    res = _explain(images, out)
    assert res.exit_code == 1 and "--overwrite" in res.output and "Traceback" not in res.output
    assert _explain(images, out, "--overwrite").exit_code == 0


def seeded_net() -> nn.Module:
    """A factory whose weights come from code: the seed in $XCAM_TEST_SEED."""
    torch.manual_seed(int(os.environ.get("XCAM_TEST_SEED", "0")))
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def test_weights_made_by_code_enter_the_run_by_their_values(images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    spec = f"{Path(__file__).stem}:seeded_net"
    args = ["--layer", "0", "--input-size", "32"]
    res = CliRunner().invoke(main, ["explain", spec, str(images), "-o", str(out), *args])
    assert res.exit_code == 0, res.output
    assert _summary(out)["run"]["model_sha256"]
    monkeypatch.setenv("XCAM_TEST_SEED", "1")  # the same spec, other weights
    res = CliRunner().invoke(main, ["explain", spec, str(images), "-o", str(out), *args])
    assert res.exit_code == 1 and "model_sha256" in res.output and "different run" in res.output


def test_bench_reports_are_written_atomically_and_sizes_capped(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "b.json").symlink_to(victim)
    args = ["bench", "--models", "demo", "--methods", "gradcam", "--backends", "eager"]
    args += ["--batch", "1", "--repeats", "1", "--no-peers", "--json", str(tmp_path / "b.json")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "precious" and not (tmp_path / "b.json").is_symlink()
    assert json.loads((tmp_path / "b.json").read_text())
    res = CliRunner().invoke(main, ["bench", "--quick", "--input-size", "100000"])
    assert res.exit_code == 2 and "100000" in res.output


def test_output_folder_problems_are_one_line_errors(images, tmp_path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for args in (
        ["explain", "demo", str(images), "-o", str(a_file / "sub")],
        ["export", "demo", "--out", str(a_file / "m.onnx")],
        ["filters", "demo", "--layer", "block1", "-o", str(a_file / "sub")],
        ["explain", "demo", str(images), "-o", ""],
    ):
        res = CliRunner().invoke(main, args)
        assert res.exit_code in (1, 2) and "Traceback" not in res.output, (args, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    out = tmp_path / "o"
    out.mkdir()
    (out / ".xcam.lock").symlink_to(out / ".xcam.lock")  # a link loop where the lock goes
    res = _explain(images, out)
    assert res.exit_code == 1 and "can't lock" in res.output


def test_one_image_reached_two_ways_and_outputs_beside_images(images, tmp_path) -> None:
    link = tmp_path / "link"
    link.symlink_to(images)
    first = sorted(images.iterdir())[0]
    out = tmp_path / "out"
    res = _explain([first, link / first.name], out)
    assert res.exit_code == 0 and len(_summary(out)["images"]) == 1
    # `-o` the image folder itself: a re-run doesn't explain its own overlays
    assert _explain(images, images).exit_code == 0
    res = _explain(images, images)
    assert res.exit_code == 0 and "3 already there" in res.output, res.output
    assert len(_summary(images)["images"]) == 3


def test_a_file_name_that_is_not_utf8(tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    shutil.copy(sample_images()[0], folder / name)
    res = _explain(folder, tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["complete"]


def infinite_net() -> nn.Module:
    """Class 1's logit overflows to +inf (finite weights: the largest float32 bias and a
    large positive weight row; non-finite weights are refused before any work), the
    others are finite: the maps are still finite."""
    net = seeded_net()
    with torch.no_grad():
        net[-1].bias[1] = torch.finfo(torch.float32).max
        net[-1].weight[1] = net[-1].weight[1].abs() * 1e34
    return net


def test_infinite_logits_give_strict_json(images, tmp_path) -> None:
    """Issue 12.9: predictions.json held NaN / Infinity, which strict JSON parsers reject."""
    out = tmp_path / "out"
    spec = f"{Path(__file__).stem}:infinite_net"
    args = ["explain", spec, str(images), "-o", str(out), "--layer", "0", "--input-size", "32"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output

    def strict(token: str):
        raise ValueError(f"not strict JSON: {token}")

    for name in ("predictions.json", "predictions.jsonl"):
        for line in (
            [(out / name).read_text()]
            if name.endswith("json")
            else ((out / name).read_text().splitlines())
        ):
            json.loads(line, parse_constant=strict)
    item = _summary(out)["images"][0]
    assert item["score"] is None and "infinite or NaN" in item["warning"]
