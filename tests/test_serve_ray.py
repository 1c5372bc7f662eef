"""``xcam serve --engine ray``: the same app as a Ray Serve deployment on a local Ray, run as
the command (a subprocess that starts its own Ray and stops it on SIGTERM), answering as
the embedded server does — same maps, same errors, batched or not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving import call, decoded_map, multipart, png, serving

from xcam.pipeline.dataset import make_explainer
from xcam.serve import make_app

pytestmark = pytest.mark.slow
TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _started(proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    """Until the command says it serves: every replica has loaded the model."""
    deadline = time.monotonic() + seconds
    while "from Ray Serve" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "xcam serve --engine ray did not start"
        time.sleep(0.5)


def test_ray_serve_answers_as_the_embedded_server(grad_file, tmp_path) -> None:
    """Two replicas on a local Ray: a multipart request of three images and a request with
    ``target=`` give the embedded server's answers (maps within 1e-6); eight concurrent
    requests (batched by ``@serve.batch``) give each the answer it gets alone; a bad
    request gets the same 4xx and the service stays up; SIGTERM stops it, exit 0, once the
    request in flight then is answered."""
    images = [png(i, size) for i, size in enumerate([(50, 70), (64, 64), (90, 40)])]
    big = png(4, (2400, 2400))  # seconds to decode, explain and draw over
    body, ctype = multipart([(f"img{i}.png", b) for i, b in enumerate(images)])
    explainer = make_explainer(grad_file)
    target = explainer.classes[2]
    with serving(make_app(explainer)) as url:
        _, want = call(url + "/v1/explain?map=npy", body, ctype)
        _, want_target = call(url + f"/v1/explain?map=npy&target={target}", images[1], "image/png")
        _, want_bad = call(url + "/v1/explain", b"not an image", "image/png")

    port = _free_port()
    cmd = [sys.executable, "-m", "xcam.cli", "serve", str(grad_file), "--engine", "ray"]
    cmd += ["--replicas", "2", "--port", str(port), "--max-wait-ms", "50", "--log-level", "warning"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    output = tmp_path / "serve.log"
    with output.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _started(proc, output)
        model = call(url + "/v1/model")[1]
        assert model["engine"] == "ray" and model["torch"] is False
        assert model["limits"]["max_wait_ms"] == 50
        status, got = call(url + "/v1/explain?map=npy", body, ctype)
        assert status == 200, got
        status, got_target = call(
            url + f"/v1/explain?map=npy&target={target}", images[1], "image/png"
        )
        assert status == 200, got_target
        with ThreadPoolExecutor(8) as pool:  # concurrent: batched within each replica
            answers = list(
                pool.map(
                    lambda k: call(url + "/v1/explain?map=npy", images[k % 3], "image/png"),
                    range(8),
                )
            )
        bad = call(url + "/v1/explain", b"not an image", "image/png")
        healthy = call(url + "/healthz")
        # a request in flight when the server is told to stop still gets its answer
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(call, url + "/v1/explain?overlay=1", big, "image/png")
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            last = held.result()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    log = output.read_text()
    assert proc.returncode == 0, log
    assert "from Ray Serve" in log and "stopped" in log

    for mine, theirs in zip(got["images"], want["images"], strict=True):
        assert mine["name"] == theirs["name"] and mine["target"] == theirs["target"]
        ranked = [(p["class"], p["name"]) for p in mine["predictions"]]
        assert ranked == [(p["class"], p["name"]) for p in theirs["predictions"]]
        probabilities = [p["probability"] for p in mine["predictions"]]
        assert probabilities == pytest.approx([p["probability"] for p in theirs["predictions"]])
        np.testing.assert_allclose(decoded_map(mine), decoded_map(theirs), atol=TOL)
    mine, theirs = got_target["images"][0], want_target["images"][0]
    assert mine["target"] == theirs["target"] == 2 and mine["target_name"] == target
    np.testing.assert_allclose(decoded_map(mine), decoded_map(theirs), atol=TOL)
    for k, (status, answer) in enumerate(answers):
        assert status == 200, answer
        alone = want["images"][k % 3]
        np.testing.assert_allclose(decoded_map(answer["images"][0]), decoded_map(alone), atol=TOL)
    assert bad == (400, want_bad)
    assert healthy == (200, {"status": "ok"})
    assert last[0] == 200 and last[1]["images"][0]["width"] == 2400, last


def test_a_model_that_cannot_load_is_one_line_before_ray_starts(tmp_path) -> None:
    """The command loads the model itself before it starts Ray: a file that isn't a model
    is refused with its reason, exit 1, and no Ray cluster is left behind."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    cmd = [sys.executable, "-m", "xcam.cli", "serve", str(broken), "--engine", "ray"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "broken.onnx" in res.stderr and "Traceback" not in res.stderr
    assert "Ray" not in res.stderr  # refused before any cluster started
