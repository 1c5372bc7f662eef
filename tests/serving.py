"""Helpers of the service's tests: the demo's in-graph file, a real uvicorn server on
127.0.0.1 in a thread, HTTP calls with the standard library, pictures and multipart bodies."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import exporters
from xcam.models import load_model


def export_demo(path: Path) -> Path:
    """The demo model exported with in-graph gradients, a target input and class names."""
    from xcam.demo import load_demo_model, model_card

    info = load_model("demo")
    exporters.export(
        load_demo_model(),
        ["block3"],
        torch.rand(2, 3, 64, 64),
        path,
        gradients=True,
        target_input=True,
        mean=info.mean,
        std=info.std,
        classes=model_card()["classes"],
    )
    return path


def png(seed: int, size: tuple[int, int] = (50, 70)) -> bytes:
    """A PNG of the demo's samples, cropped and resized (a real picture, not noise)."""
    from xcam.demo import sample_images

    samples = sample_images()
    im = Image.open(samples[seed % len(samples)]).convert("RGB").resize(size[::-1])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def serving(app):
    """``app`` under a real uvicorn server on 127.0.0.1 (a free port), in a thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def call(url: str, body: bytes | None = None, ctype: str | None = None, headers=None):
    """(status, decoded JSON or text) of a GET (no body) or POST."""
    request = urllib.request.Request(url, data=body, headers={**(headers or {})})
    if ctype is not None:
        request.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def multipart(files: list[tuple[str, bytes]], field: str = "image") -> tuple[bytes, str]:
    boundary = "xcam-test-boundary"
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def decoded_map(entry: dict) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(entry["map"]["data"])))
