"""The Ray engine (Ray Data, a local cluster of 2 CPUs started and shut down here): the
same maps and rows as the local engine, workers on an in-graph file without torch, a worker
killed mid-batch retried with every image explained exactly once, and resumption."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import ray_factories
import torch

import exporters
from xcam.pipeline.job import JobOptions, run_job
from xcam.pipeline.lite_batch import LiteBatch
from xcam.pipeline.ray_engine import ray_engine
from xcam.pipeline.sources import find_items

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(ray_factories)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def grad_file(tmp_path_factory) -> Path:
    from xcam.demo import load_demo_model

    path = tmp_path_factory.mktemp("ingraph") / "demo_grad.onnx"
    exporters.export(load_demo_model(), ["block3"], torch.rand(2, 3, 64, 64), path, gradients=True)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    from test_dataset import _pictures

    folder = tmp_path_factory.mktemp("pics") / "imgs"
    _pictures(folder, 12, seed=5)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


@pytest.fixture(scope="module")
def local(grad_file, pictures, tmp_path_factory) -> dict[str, dict]:
    """The local engine's rows and maps on the same images: the reference."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_job(LiteBatch(grad_file), find_items([pictures]), out, JobOptions(batch_size=4))
    return _rows(out)


def _rows(out: Path) -> dict[str, dict]:
    summary = json.loads((out / "predictions.json").read_text())
    rows = {
        Path(r["image"]).name: {**r, "array": np.load(out / r["map"])} for r in summary["images"]
    }
    rows.update({Path(e["image"]).name: e for e in summary["errors"]})
    return rows


def _same(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert set(got) == set(want)
    for name, row in want.items():
        if "error" in row:  # the same reason (the folders may differ)
            mine, theirs = got[name], row
            where = (str(Path(mine["image"]).parent), str(Path(theirs["image"]).parent))
            assert mine["error"].replace(where[0], "") == theirs["error"].replace(where[1], "")
            continue
        np.testing.assert_allclose(got[name]["array"], row["array"], atol=1e-6, rtol=0)
        for key in ("target", "target_name", "predictions", "peak", "overlay", "map"):
            assert got[name][key] == row[key], (name, key)
        assert abs(got[name]["score"] - row["score"]) <= 1e-6


def _once(out: Path, n: int) -> None:
    """Each image has exactly one row in the journal and in the table."""
    journal = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in journal if "key" in r]
    assert len(keys) == len(set(keys)) == n
    images = pq.read_table(out / "records.parquet").column("image").to_pylist()
    assert len(images) == len(set(images)) == n
    assert not (out / ".xcam-parts").exists()


def _on_ray(wrapper, arg: str, grad_file: Path, folder: Path, out: Path, batch: int):
    """The job on 2 Ray workers, each holding ``wrapper`` around the in-graph file."""
    inner = functools.partial(LiteBatch, grad_file, threads=1)
    factory = functools.partial(wrapper, inner, arg)
    engine = ray_engine(factory, concurrency=2)
    return run_job(
        LiteBatch(grad_file), find_items([folder]), out, JobOptions(batch), engine=engine
    )


def test_ray_engine_equals_the_local_engine_without_torch_on_workers(
    cluster, grad_file, pictures, local, tmp_path
) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    out = tmp_path / "out"
    report = _on_ray(ray_factories.Probe, str(seen), grad_file, pictures, out, batch=4)
    assert len(report.items) == 12 and [Path(e["image"]).name for e in report.errors] == [
        "broken.png"
    ]
    _same(_rows(out), local)
    _once(out, 13)
    probes = [json.loads(p.read_text()) for p in seen.iterdir()]
    assert probes and not any(p["torch"] for p in probes), probes


def test_a_killed_worker_is_retried_and_every_image_explained_once(
    cluster, grad_file, pictures, local, tmp_path
) -> None:
    """One worker dies on its first batch: Ray restarts it, the batch runs again, every
    image is explained once. An image that kills every worker it reaches (the flat one) is
    found by trying its batch image by image, and ends as its error row; the rest of the
    job, its batch-mate too, finishes."""
    from PIL import Image

    folder = tmp_path / "imgs"
    shutil.copytree(pictures, folder)
    Image.new("RGB", (50, 40), (7, 7, 7)).save(folder / "zzz_flat.png")  # the last batch
    marker = tmp_path / "killed"
    out = tmp_path / "out"
    report = _on_ray(ray_factories.Killer, str(marker), grad_file, folder, out, batch=2)
    assert marker.exists()  # a worker did die
    rows = _rows(out)
    assert "died on each of 2 tries" in rows.pop("zzz_flat.png")["error"]
    assert len(report.items) == 12 and len(report.errors) == 2  # broken.png, zzz_flat.png
    _same(rows, local)
    _once(out, 14)


def test_the_cli_ray_engine_resumes(cluster, grad_file, pictures, local, tmp_path, runner) -> None:
    from xcam.cli import main

    out = tmp_path / "out"
    some = sorted(pictures.glob("img00*.png"))[:5]
    args = ["explain", str(grad_file), "--out", str(out), "--engine", "ray", "--batch-size", "4"]
    first = runner.invoke(main, [*args, *map(str, some)])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, [*args, str(pictures)])
    assert again.exit_code == 1, again.output  # broken.png
    assert "5 already there from an earlier run" in again.output
    _same(_rows(out), local)
    _once(out, 13)
