"""``xcam serve``: a real uvicorn server on 127.0.0.1 answering real HTTP requests — maps
equal to ``xcam.lite``'s, dynamic batching equal to batch 1, the bad-request matrix, the
routes, and the command run as a subprocess (an in-graph file served without torch)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from serving import call, decoded_map, multipart, png, serving

from xcam.images import image_from_bytes, preprocess_array
from xcam.lite import OnnxExplainer
from xcam.models import load_model
from xcam.pipeline.dataset import make_explainer
from xcam.serve import make_app
from xcam.viz import resize_map

TOL = 1e-6


def test_served_maps_equal_lite_image_by_image(grad_file) -> None:
    """Three images of different sizes in one multipart request: each map (``?map=npy``,
    at the image's size) equals ``xcam.lite``'s map resized, within 1e-6; the top-1 and the
    target agree; ``target=`` by class name explains that class."""
    lite = OnnxExplainer(grad_file)
    images = [png(i, size) for i, size in enumerate([(50, 70), (64, 64), (90, 40)])]
    explainer = make_explainer(grad_file)
    with serving(make_app(explainer)) as url:
        body, ctype = multipart([(f"img{i}.png", b) for i, b in enumerate(images)])
        status, got = call(url + "/v1/explain?map=npy", body, ctype)
        assert status == 200, got
        name = explainer.classes[1]
        status, chosen = call(url + f"/v1/explain?map=npy&target={name}", images[0], "image/png")
        assert status == 200, chosen
    assert [e["name"] for e in got["images"]] == ["img0.png", "img1.png", "img2.png"]
    for data, entry in zip(images, got["images"], strict=True):
        picture = image_from_bytes(data)
        x = preprocess_array([picture], explainer.input_size, explainer.mean, explainer.std)
        want = lite(x)
        size = (picture.height, picture.width)
        np.testing.assert_allclose(decoded_map(entry), resize_map(want.maps[0], size), atol=TOL)
        assert entry["target"] == int(want.targets[0]) == entry["predictions"][0]["class"]
        assert (entry["width"], entry["height"]) == (picture.width, picture.height)
    picture = image_from_bytes(images[0])
    x = preprocess_array([picture], explainer.input_size, explainer.mean, explainer.std)
    want = lite(x, targets=[1])
    entry = chosen["images"][0]
    assert entry["target"] == 1 and entry["target_name"] == name
    size = (picture.height, picture.width)
    np.testing.assert_allclose(decoded_map(entry), resize_map(want.maps[0], size), atol=TOL)


def test_png_map_and_overlay(grad_file) -> None:
    """By default the map is an 8-bit grey PNG (the [0, 1] map times 255, rounded);
    ``?overlay=1`` adds the overlay PNG at the image's size."""
    data = png(3)
    with serving(make_app(make_explainer(grad_file))) as url:
        _, exact = call(url + "/v1/explain?map=npy", data, "image/png")
        status, got = call(url + "/v1/explain?overlay=1", data, "image/png")
    assert status == 200, got
    entry = got["images"][0]
    grey = np.asarray(Image.open(io.BytesIO(base64.b64decode(entry["map"]["data"]))))
    assert grey.dtype == np.uint8 and grey.shape == (50, 70)
    np.testing.assert_array_equal(
        grey, np.rint(decoded_map(exact["images"][0]) * 255).astype(np.uint8)
    )
    overlay = Image.open(io.BytesIO(base64.b64decode(entry["overlay"]["data"])))
    assert overlay.size == (70, 50) and overlay.mode == "RGB"
    assert np.asarray(overlay).std() > 0


def test_dynamic_batching_answers_as_batch_one(grad_file) -> None:
    """Sixteen concurrent requests on a server that batches (up to 8, waiting 50 ms) get the
    answers a server of batch 1 gives, and fewer model calls than requests happen."""
    images = [png(i, (40 + 3 * i, 60)) for i in range(16)]
    explainer = make_explainer(grad_file)

    def answers(url: str) -> list[dict]:
        with ThreadPoolExecutor(16) as pool:
            done = list(
                pool.map(lambda b: call(url + "/v1/explain?map=npy", b, "image/png"), images)
            )
        assert all(status == 200 for status, _ in done), done
        return [got["images"][0] for _, got in done]

    with serving(make_app(explainer, max_batch=1, max_wait_ms=0)) as url:
        single = answers(url)
    with serving(make_app(explainer, max_batch=8, max_wait_ms=50)) as url:
        batched = answers(url)
        _, metrics = call(url + "/metrics")
    for a, b in zip(single, batched, strict=True):
        np.testing.assert_allclose(decoded_map(a), decoded_map(b), atol=TOL)
        assert a["target"] == b["target"] and a["predictions"][0] == b["predictions"][0]
        assert abs(a["score"] - b["score"]) < 1e-5
    calls = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("xcam_batch_size_count")
        )
    )
    assert calls < 16, metrics  # some requests shared a model call


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_goes_on(grad_file) -> None:
    """Each bad request gets its 4xx and a JSON error saying what is wrong; a good request
    and /healthz still answer after all of them; /metrics counts the errors."""
    good = png(0)
    big = png(1, (200, 200))
    small = png(2, (80, 80))  # two of them pass the limit of a request
    pair, pair_type = multipart([("a.png", small), ("b.png", small)])
    app = make_app(make_explainer(grad_file), max_body=150_000, max_pixels=100 * 100)
    body, ctype = multipart([("a.png", good)])
    fields_only = (
        b'--xcam-test-boundary\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
        b"hello\r\n--xcam-test-boundary--\r\n"
    )
    cases = [
        ("text/plain", good, "", 415, "not an image"),
        ("image/png", b"GIF89a but not really", "", 400, "not a readable image"),
        ("image/png", good[: len(good) // 2], "", 400, "truncated"),
        ("image/png", big, "", 400, "above the limit"),  # a decompression bomb, in small
        (pair_type, pair, "", 400, "above the limit of 10000 pixels for a request's images"),
        ("image/png", b"\0" * 200_000, "", 413, "over the limit"),
        ("image/png", b"", "", 400, "empty"),
        ("image/png", good, "?target=99", 400, "out of range"),
        ("image/png", good, "?target=zebra", 400, "neither a class index"),
        ("image/png", good, "?map=jpeg", 400, "one of png, npy"),
        ("image/png", good, "?overlay=maybe", 400, "1 or 0"),
        ("image/png", good, "?method=hirescam", 400, "not served here"),
        (ctype, body[:40], "", 400, "multipart"),
        (ctype.replace("xcam-test-boundary", "other"), body, "", 400, "malformed multipart"),
        (ctype, fields_only, "", 400, "without a file field"),
        (*reversed(multipart([(f"{k}.png", b"x") for k in range(65)])), "", 400, "over 64"),
    ]
    with serving(app) as url:
        for media, data, query, status, words in cases:
            got_status, got = call(url + "/v1/explain" + query, data, media)
            assert (got_status, words in str(got.get("error", ""))) == (status, True), (
                media,
                query,
                got_status,
                got,
            )
        # a name is only echoed back, without its folders: no request names a server path
        status, got = call(
            url + "/v1/explain", good, "image/png", {"X-Filename": "../../etc/passwd"}
        )
        assert status == 200 and got["images"][0]["name"] == "passwd"
        assert call(url + "/healthz") == (200, {"status": "ok"})
        assert call(url + "/v1/explain", good, "image/png")[0] == 200
        # routes and methods that don't exist: the same JSON error, naming the way
        assert call(url + "/v1/explain") == (405, {"error": "GET /v1/explain: use POST"})
        status, got = call(url + "/v2/explain", good, "image/png")
        assert status == 404 and "/v2/explain" in got["error"] and "/v1/explain" in got["error"]
        _, metrics = call(url + "/metrics")
    assert 'xcam_errors_total{path="/v1/explain",status="400"} 14.0' in metrics
    assert 'xcam_errors_total{path="/v1/explain",status="413"} 1.0' in metrics


def test_model_route_says_what_is_served(grad_file) -> None:
    from xcam.demo import model_card

    with serving(make_app(make_explainer(grad_file), max_batch=4)) as url:
        status, got = call(url + "/v1/model")
    assert status == 200
    assert got["method"] == "gradcam" and got["layers"] == ["block3"]
    assert got["input_size"] == [64, 64] and got["classes"] == model_card()["classes"]
    assert got["limits"]["max_batch"] == 4


def test_an_eager_model_is_served_through_the_library(tmp_path) -> None:
    """A model spec (no exported file) is served by the main library: its map equals the
    library's Grad-CAM on the same input."""
    import xcam

    data = png(2)
    with serving(make_app(make_explainer("demo"))) as url:
        status, got = call(url + "/v1/explain?map=npy", data, "image/png")
    assert status == 200, got
    info = load_model("demo")
    picture = image_from_bytes(data)
    x = torch.from_numpy(preprocess_array([picture], info.input_size, info.mean, info.std))
    want = xcam.GradCAM(info.model, info.default_layer)(x).maps[0].numpy()
    np.testing.assert_allclose(decoded_map(got["images"][0]), resize_map(want, (50, 70)), atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_an_in_graph_file_without_torch(grad_file) -> None:
    """``xcam serve FILE`` as a subprocess: it answers on 127.0.0.1, never imports torch for
    an in-graph file, and stops on SIGTERM."""
    port = _free_port()
    cmd = [sys.executable, "-m", "xcam.cli", "serve", str(grad_file), "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "xcam serve did not start"
            try:
                if call(url + "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        status, got = call(url + "/v1/explain", png(0), "image/png")
        assert status == 200 and got["images"][0]["map"]["format"] == "png"
        assert call(url + "/v1/model")[1]["torch"] is False
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    assert f"on http://127.0.0.1:{port}" in out.decode()


def test_one_images_failure_fails_its_request_only() -> None:
    """A batch whose model call fails is retried image by image: the image that fails gets
    its error, the requests batched with it their answers, and the batcher goes on."""
    import asyncio

    from xcam.pipeline.batch import Explained
    from xcam.serve import Batcher

    class Picky:
        name, input_size, mean, std, classes = "gradcam", (4, 4), (0.0,) * 3, (1.0,) * 3, None

        def __init__(self) -> None:
            self.calls: list[int] = []

        def settings(self) -> dict:
            return {}

        def __call__(self, x, labels):
            self.calls.append(len(x))
            if (x < 0).any():
                raise RuntimeError("the model can't take a negative input")
            return [Explained(np.full((4, 4), float(v[0, 0, 0]), np.float32), {}) for v in x]

    picky = Picky()

    async def run() -> list:
        batcher = Batcher(picky, max_batch=8, max_wait_ms=100)
        await batcher.start()
        inputs = [np.full((3, 4, 4), v, np.float32) for v in (1.0, -1.0, 2.0)]
        first = await asyncio.gather(
            *(batcher.explain(x, None, f"i{k}") for k, x in enumerate(inputs)),
            return_exceptions=True,
        )
        after = await batcher.explain(inputs[2], None, "later")
        await batcher.stop()
        return [*first, after]

    good, bad, other, later = asyncio.run(run())
    assert isinstance(bad, RuntimeError) and "negative" in str(bad)
    assert good.map[0, 0] == 1.0 and other.map[0, 0] == 2.0 and later.map[0, 0] == 2.0
    assert picky.calls[0] == 3  # they were one batch first


def test_the_commands_options_are_checked_before_anything_loads(runner) -> None:
    from xcam.cli import main

    bad = runner.invoke(main, ["serve", "demo", "--max-body", "12XB"])
    assert bad.exit_code != 0 and "--max-body" in bad.output and "8MB" in bad.output
    bad = runner.invoke(main, ["serve", "demo", "--colormap", "no-such-map"])
    assert bad.exit_code != 0 and "--colormap" in bad.output


def test_requests_over_max_pending_get_503_and_the_rest_answers(grad_file) -> None:
    """Requests in flight are bounded (``max_pending``): one more than the bound, while the
    model is busy, gets a 503 naming the limit with ``Retry-After`` (no unbounded queue of
    bodies and decoded images); those within it are answered, and so is the next one."""
    import threading

    explainer = make_explainer(grad_file)
    gate = threading.Event()
    inner = explainer.__call__

    class Slow:  # the model held until the test lets it go
        def __getattr__(self, name):
            return getattr(explainer, name)

        def __call__(self, x, labels):
            gate.wait(30)
            return inner(x, labels)

    with serving(make_app(Slow(), max_pending=2, max_wait_ms=0)) as url:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(call, url + "/v1/explain", png(k), "image/png") for k in (0, 1)]
            deadline = time.monotonic() + 30
            while True:  # both in flight: the metrics count them
                _status, text = call(url + "/metrics")
                if "xcam_requests_in_flight 2.0" in text:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
            request = urllib.request.Request(
                url + "/v1/explain", data=png(2), headers={"Content-Type": "image/png"}
            )
            with pytest.raises(urllib.error.HTTPError) as busy:
                urllib.request.urlopen(request, timeout=30)
            gate.set()
            answered = [f.result() for f in held]
        after = call(url + "/v1/explain", png(3), "image/png")
    assert busy.value.code == 503 and busy.value.headers["Retry-After"] == "1"
    error = json.loads(busy.value.read())["error"]
    assert "busy" in error and "2 requests" in error
    assert [status for status, _ in answered] == [200, 200] and after[0] == 200


def test_a_port_in_use_is_one_line_naming_it(grad_file, runner) -> None:
    """Another server on the port: the command says so in one line (exit 1) before it
    loads anything, for either engine, instead of a server log or Ray's traceback."""
    from xcam.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for engine in ("local", "ray"):
            argv = ["serve", str(grad_file), "--port", str(port), "--engine", engine]
            res = runner.invoke(main, argv)
            assert res.exit_code == 1, res.output
            assert f"127.0.0.1:{port}" in res.output and "in use" in res.output, res.output
            assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_an_unknown_class_name_says_the_names_there_are(grad_file) -> None:
    """``target=`` (and a manifest's labels) with a name the model hasn't: the error offers
    the nearest name, else lists them (a few of them, for a model of many)."""
    from xcam.core.errors import InputError
    from xcam.pipeline.job import label_of

    explainer = make_explainer(grad_file)
    with pytest.raises(InputError, match="did you mean 'triangle'"):
        label_of("Triangle", explainer)
    with pytest.raises(InputError, match="the classes: circle, square, triangle, cross"):
        label_of("zebra", explainer)
