"""Dataset jobs: the streaming pipeline (local engine) against the plain per-image path,
sources (folders, globs, manifests with labels), records (JSON and Parquet), overlays off,
resumption, bad images, memory boundedness, and the job on an in-graph file without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import xcam
from xcam.core.errors import InputError
from xcam.images import load_image, preprocess
from xcam.lite import OnnxExplainer
from xcam.models import load_model
from xcam.pipeline import explain_dataset
from xcam.pipeline.lite_batch import LiteBatch
from xcam.pipeline.sources import find_items
from xcam.viz import resize_map

TOL = 1e-6


def _pictures(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` RGB pictures of varied sizes (the demo's samples, cropped and rescaled)."""
    from xcam.demo import sample_images

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = sample_images()
    out = []
    for i in range(n):
        src = Image.open(samples[i % len(samples)]).convert("RGB")
        w, h = (int(v) for v in rng.integers(40, 90, size=2))
        p = folder / f"img{i:03d}.png"
        src.resize((w, h)).save(p)
        out.append(p)
    return out


def _rows(out: Path) -> dict[str, dict]:
    return {
        Path(r["image"]).name: r
        for r in json.loads((out / "predictions.json").read_text())["images"]
    }


def _table(out: Path) -> dict[str, dict]:
    rows = pq.read_table(out / "records.parquet").to_pylist()
    return {Path(r["image"]).name: r for r in rows}


def test_streaming_job_equals_the_per_image_path(tmp_path) -> None:
    """Batches of 3 through decode threads and write threads give each image the map and
    prediction the method gives that image alone."""
    paths = _pictures(tmp_path / "imgs", 7)
    out = tmp_path / "out"
    report = explain_dataset("demo", tmp_path / "imgs", out, batch_size=3, workers=2)
    assert not report.errors and len(report.items) == 7
    info = load_model("demo")
    method = xcam.GradCAM(info.model, "block3")
    rows, table = _rows(out), _table(out)
    for p in paths:
        im = load_image(p)
        alone = method(preprocess([im], info.input_size, info.mean, info.std))
        want = resize_map(alone.maps[0], (im.height, im.width))
        got = np.load(out / rows[p.name]["map"])
        assert got.shape == (im.height, im.width)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
        row = rows[p.name]
        assert row["target"] == int(alone.targets[0])
        assert abs(row["score"] - float(alone.scores[0])) <= 1e-5
        probs = alone.logits[0].softmax(0)
        for pred in row["predictions"]:
            assert abs(pred["probability"] - float(probs[pred["class"]])) <= TOL
        # the table row says the same as the JSON row
        t = table[p.name]
        assert t["target"] == row["target"] and t["map"] == row["map"]
        assert t["top_classes"] == [r["class"] for r in row["predictions"]]
        peak = np.unravel_index(np.argmax(alone.maps[0].numpy()), alone.maps[0].shape)
        assert t["peak_row"] == int((peak[0] + 0.5) * im.height / alone.maps[0].shape[0])
        flat = np.sort(alone.maps[0].numpy().ravel().astype(np.float64))
        top = flat[-round(0.1 * flat.size) :].sum() / flat.sum()
        assert abs(t["top10_mass"] - top) <= 1e-6


def test_in_graph_job_runs_without_torch_and_equals_lite_per_image(grad_file, tmp_path) -> None:
    paths = _pictures(tmp_path / "imgs", 5, seed=1)
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys
        from xcam.pipeline import explain_dataset
        report = explain_dataset({str(grad_file)!r}, {str(tmp_path / "imgs")!r},
                                 {str(out)!r}, batch_size=2)
        assert not report.errors and len(report.items) == 5, report.errors
        from xcam.cli import main
        main(["explain", {str(grad_file)!r}, {str(tmp_path / "imgs")!r}, "--out",
              {str(tmp_path / "cli")!r}, "--no-overlays"], standalone_mode=False)
        assert "torch" not in sys.modules, "the in-graph job imported torch"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    lite, stats = OnnxExplainer(grad_file), LiteBatch(grad_file)
    rows = _rows(out)
    for p in paths:
        im = load_image(p)
        x = preprocess([im], (64, 64), stats.mean, stats.std).numpy()
        alone = lite(x)
        want = resize_map(alone.maps[0], (im.height, im.width))
        np.testing.assert_allclose(np.load(out / rows[p.name]["map"]), want, atol=TOL, rtol=0)
        assert rows[p.name]["target"] == int(alone.targets[0])
        assert abs(rows[p.name]["score"] - float(alone.logits[0, alone.targets[0]])) <= TOL


def test_manifest_labels_explain_the_true_class(grad_file, tmp_path, runner) -> None:
    """A CSV manifest with labels (indices and class names), through the CLI:
    --target-column explains each label, the rows say whether the prediction was right; a
    missing file and an unknown label are rows with their errors, the rest finishes."""
    from xcam.cli import main

    paths = _pictures(tmp_path / "data" / "imgs", 4, seed=2)
    classes = OnnxExplainer(grad_file).metadata.classes
    labels = [0, 2, classes[1], None]  # an empty cell: explained for its prediction
    lines = ["file,label"] + [
        f"imgs/{p.name},{'' if lab is None else lab}" for p, lab in zip(paths, labels, strict=True)
    ]
    lines += ["imgs/missing.png,1", f"imgs/{paths[0].name.replace('000', '009')},nosuch"]
    shutil.copy(paths[0], paths[0].with_name(paths[0].name.replace("000", "009")))
    manifest = tmp_path / "data" / "list.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = [str(grad_file), str(manifest), "--out", str(out), "--path-column", "file"]
    res = runner.invoke(main, ["explain", *args, "--target-column", "label", "--no-overlays"])
    assert res.exit_code == 1, res.output
    assert "2 image(s) could not be explained" in res.output
    table = _table(out)
    errors = {k: v["error"] for k, v in table.items() if v["error"]}
    assert set(errors) == {"missing.png", "img009.png"}
    assert "no such file" in errors["missing.png"] and "'nosuch'" in errors["img009.png"]
    lite, stats = OnnxExplainer(grad_file), LiteBatch(grad_file)
    for p, label in zip(paths, labels, strict=True):
        want = label if isinstance(label, int) or label is None else classes.index(label)
        row = table[p.name]
        assert row["overlay"] is None and not (out / f"{p.stem}_gradcam.png").exists()
        im = load_image(p)
        x = preprocess([im], (64, 64), stats.mean, stats.std).numpy()
        alone = lite(x, targets=None if want is None else [want])
        if want is None:
            assert row["label"] is None and row["correct"] is None
            assert row["target"] == int(alone.logits[0].argmax())
        else:
            assert row["label"] == want and row["target"] == want
            assert row["correct"] == (int(alone.logits[0].argmax()) == want)
        np.testing.assert_allclose(
            np.load(out / row["map"]), resize_map(alone.maps[0], (im.height, im.width)), atol=TOL
        )


def test_a_changed_label_is_explained_again(grad_file, tmp_path) -> None:
    paths = _pictures(tmp_path / "imgs", 2, seed=4)
    manifest = tmp_path / "m.csv"
    out = tmp_path / "out"

    def run(labels):
        rows = "".join(f"{p},{lab}\n" for p, lab in zip(paths, labels, strict=True))
        manifest.write_text("path,y\n" + rows)
        return explain_dataset(grad_file, manifest, out, target_column="y", overlays=False)

    assert run([1, 2]).skipped == 0
    again = run([1, 3])
    assert again.skipped == 1 and not again.errors
    assert {Path(r["image"]).name: r["target"] for r in again.items} == {
        paths[0].name: 1,
        paths[1].name: 3,
    }


def test_sources_folders_globs_and_parquet_manifests(tmp_path) -> None:
    root = tmp_path / "ds"
    a = _pictures(root / "a", 2)
    b = _pictures(root / "a" / "deep", 1, seed=3)
    _pictures(root / ".hidden", 1)
    old = root / "old_out"  # a previous job's outputs: not images to explain
    _pictures(old, 1)
    (old / "predictions.jsonl").write_text("{}\n")
    notes: list[str] = []
    found = [it.path for it in find_items([root], echo=notes.append)]
    assert found == [*a, *b]
    assert any("old_out" in n for n in notes)
    assert [it.path for it in find_items([str(root / "a" / "*.png")])] == a
    assert [it.path for it in find_items([str(root / "**" / "deep" / "*.png")])] == b
    notes.clear()  # a glob over the outputs of an earlier job skips them, and says so
    matched = [it.path for it in find_items([str(root / "**" / "*.png")], echo=notes.append)]
    assert matched == sorted([*a, *b], key=str)  # a glob's matches in path order
    assert any("outputs of an earlier xcam job" in n for n in notes)
    assert find_items([str(root / "*.jpg")], echo=notes.append) == []
    assert "note: no images match" in notes[-1]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [str(p) for p in a], "y": [1, None]}), manifest)
    items = find_items([manifest], target_column="y")
    assert [(it.path, it.label) for it in items] == [(a[0], 1), (a[1], None)]
    with pytest.raises(InputError, match="no target column 'label'; its columns are 'path', 'y'"):
        find_items([manifest], target_column="label")
    with pytest.raises(InputError, match="is for a manifest"):
        find_items([root], target_column="y")


def test_interrupted_job_resumes_and_explains_each_image_once(tmp_path) -> None:
    _pictures(tmp_path / "imgs", 9)
    out = tmp_path / "out"
    seen = []

    def stop_after_four(n: int) -> None:
        seen.append(n)
        if sum(seen) >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain_dataset("demo", tmp_path / "imgs", out, batch_size=2, on_progress=stop_after_four)
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["complete"] is False and 4 <= len(summary["images"]) < 9
    first = {r["image"]: np.load(out / r["map"]) for r in summary["images"]}
    report = explain_dataset("demo", tmp_path / "imgs", out, batch_size=2)
    assert report.skipped == len(first) and len(report.items) == 9 and not report.errors
    journal = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in journal if "stem" in r]
    assert len(keys) == len(set(keys)) == 9  # each image explained exactly once
    assert pq.read_table(out / "records.parquet").num_rows == 9
    fresh = explain_dataset("demo", tmp_path / "imgs", tmp_path / "again", batch_size=2)
    again = {r["image"]: r["map"] for r in fresh.items}
    for image, arr in first.items():
        np.testing.assert_array_equal(arr, np.load(tmp_path / "again" / again[image]))


_MEMORY_JOB = """
import resource, sys
import numpy as np
from xcam.pipeline.batch import Explained
from xcam.pipeline.job import JobOptions, run_job

class Mean:
    '''A stand-in model: the map is the input's channel mean (the pipeline is measured).'''
    name, input_size, mean, std, classes = "mean", (64, 64), (0.5,) * 3, (0.25,) * 3, None

    def settings(self):
        return {"model": "mean"}

    def __call__(self, x, labels):
        maps = x.mean(axis=1)
        maps = (maps - maps.min()) / (np.ptp(maps) + 1e-6)
        return [Explained(m.astype(np.float32), {"target": 0, "score": 0.0}) for m in maps]

paths = sorted(__import__("pathlib").Path(sys.argv[1]).glob("*.png"))[: int(sys.argv[2])]
report = run_job(Mean(), paths, sys.argv[3], JobOptions(batch_size=16, overlays=True))
assert len(report.items) == len(paths) and not report.errors
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_stays_flat_with_the_number_of_images(tmp_path) -> None:
    """Peak RSS explaining 1,200 images is within 25 MB of explaining 120: decoded images,
    inputs and maps are bounded by the queues, not kept (a leak of one 64x64 input per
    image adds 53 MB; measured here, the job without a leak adds about 12 MB)."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1200):
        pixels = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=0)

    def peak(n: int) -> int:
        out = tmp_path / f"out{n}"
        run = [sys.executable, "-c", _MEMORY_JOB, str(folder), str(n), str(out)]
        done = subprocess.run(run, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        shutil.rmtree(out)
        return int(done.stdout.split()[-1])  # KiB

    small, large = peak(120), peak(1200)
    assert large - small < 25 * 1024, (small, large)


def test_a_jobs_bookkeeping_lives_on_disk_not_in_memory(tmp_path) -> None:
    """The plan (each image's key, path, label, stem, whether to do) and the record (each
    image's row and file names) of 6,000 images hold under 40 bytes an image of Python
    memory: they live in SQLite scratch files (before, the same state took ~1.7 KB an
    image, ~85 MB over the 50k ImageNet validation images)."""
    import gc
    import tracemalloc

    from xcam.pipeline.plan import Plan
    from xcam.record import Record

    n = 6000
    paths = [str(tmp_path / f"class{i % 7}" / f"img{i:05d}.jpg") for i in range(n)]

    def job():
        plan = Plan.of(paths, print)
        record = Record(tmp_path, {"method": "gradcam"})
        plan.assign_stems(record.items)
        for key, stem in plan.stems.items():
            names = [f"{stem}_gradcam.npy", f"{stem}_gradcam.png"]
            record.claim(names)
            row = {"key": key, "stamp": [1, 2], "image": key, "stem": stem, "target": 3}
            record.add({**row, "overlay": names[1], "map": names[0], "peak": [4, 5]})
        assert plan.mark_todo(lambda key, item: False) == 0
        return plan, record, record.items.select(plan.__contains__)

    # once first: the interpreter's own tables (Python 3.11's pathlib interns every name it
    # sees) grow to their size, which a job of this size needs whatever it keeps
    job()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        plan, record, report = job()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(plan) == len(report) == len(plan.todo) == n
    assert held < 40 * n, f"{held / n:.0f} bytes an image"
    # and what lives on disk reads back in order
    assert report[0]["stem"] == "img00000" and report[-1]["stem"] == f"img{n - 1:05d}"
    assert [it.path.name for it in plan.todo[5:8]] == [f"img0000{i}.jpg" for i in (5, 6, 7)]
    assert f"img{n - 1:05d}_gradcam.png" in record.owned and len(record.owned) == 2 * n


def test_stems_stay_unique_and_kept_across_runs(tmp_path) -> None:
    """Equal names in different folders get ``a``, ``a_2``; an image the record knows keeps
    its stem; a row set again keeps its place; names that aren't UTF-8 survive."""
    from xcam.pipeline.plan import Plan
    from xcam.record import Record

    odd = "caf\udce9"  # a file name's undecodable byte, as Python keeps it
    paths = [tmp_path / "x" / "a.png", tmp_path / "y" / "a.png", tmp_path / f"{odd}.png"]
    record = Record(tmp_path, {})
    known = str(tmp_path / "z" / "a.png")
    record.add({"key": known, "stem": "a", "stamp": [1, 1], "image": known, "map": "a.npy"})
    plan = Plan.of([*paths, paths[0]], print)
    plan.assign_stems(record.items)
    stems = dict(plan.stems)
    assert [stems[str(p)] for p in paths] == ["a_2", "a_3", odd]
    record.add({"key": known, "stem": "a", "stamp": [2, 2], "image": known, "map": "a.npy"})
    record.add({"key": "k", "stem": "b", "stamp": [1, 1], "image": "k", "map": "b.npy"})
    record.add({"key": known, "stem": "a", "stamp": [3, 3], "image": known, "map": "a.npy"})
    assert list(record.items) == [known, "k"] and record.items[known]["stamp"] == [3, 3]


def test_the_report_holds_hostile_names_as_data(tmp_path) -> None:
    """A file name that would end the report's script or open a comment stays data: the
    rows parse back as they were, and nothing in them closes the script."""
    from xcam.pipeline.report import write_report
    from xcam.record import Record

    record = Record(tmp_path, {})
    evil = "x</script><script>alert(1)</script><!--.png"
    row = {"key": "k", "image": evil, "stem": "x", "map": "x y#?.npy", "overlay": "x.png"}
    record.add({**row, "predictions": [{"class": 0, "name": "<b>", "probability": 0.5}]})
    record.add({"key": "e", "image": "bad.png", "error": "not </script> an image"})
    page = write_report(record, "/somewhere/m.onnx", "gradcam").read_text()
    rows = page.split('type="application/json">')[1].split("</script>")[0]
    cards = json.loads(rows)
    assert [c["image"] for c in cards] == [Path(evil).name, "bad.png"]
    assert cards[0]["predicted"] == "<b>" and cards[1]["error"] == "not </script> an image"
    assert cards[0]["map"] == "x%20y%23%3F.npy"  # a link, escaped
    assert "/somewhere" not in page  # the model by its file name only
