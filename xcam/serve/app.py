"""The HTTP service of ``xcam serve``: an ASGI app (FastAPI) around one explainer.

::

    POST /v1/explain   images (multipart file fields, or one image's raw bytes) → JSON:
                       top-k, target, score, the map (PNG or ?map=npy), ?overlay=1
    GET  /             a page: drop an image, see the prediction, overlay and map
    GET  /v1/model     what is served: model, method, layers, input size, classes
    GET  /healthz      {"status": "ok"}
    GET  /metrics      Prometheus text: requests, errors, latency, batch sizes

Images of concurrent requests share model calls (:class:`~xcam.serve.batcher.Batcher`).
A request never names a file on the server: images come in its body, which is bounded
(``max_body``), as is each image's pixel count (``max_pixels``: decompression bombs) and the
requests in flight (``max_pending``: a 503 with ``Retry-After`` above). A bad request gets a
4xx and ``{"error": "…"}`` naming the problem; the server goes on serving.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import PurePath
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from xcam.core.errors import InputError, NumericalError
from xcam.images import TooManyPixels
from xcam.pipeline.batch import BatchExplainer
from xcam.serve.answer import MAP_FORMATS, answer, decode_upload
from xcam.serve.batcher import Batcher

MAX_BODY = 8 * 2**20  # bytes of a request's body
MAX_PIXELS = 40_000_000  # pixels of one request's images (a 6000x6000 photo fits)
MAX_IMAGES = 64  # images in one request
MAX_PENDING = 64  # requests to /v1/explain in flight at once (503 above)
ROUTES = ("/", "/v1/explain", "/v1/model", "/healthz", "/metrics")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class RequestError(Exception):
    """A request the service refuses: its HTTP status and the reason, for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def make_app(
    explainer: BatchExplainer,
    *,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    max_body: int = MAX_BODY,
    max_pixels: int | None = MAX_PIXELS,
    max_pending: int = MAX_PENDING,
    alpha: float = 0.5,
    colormap: str = "jet",
    batcher: type = Batcher,
):
    """The service's ASGI app for ``explainer`` (see the module's docstring); run it with
    uvicorn (``xcam serve`` does). ``batcher`` gathers the images of concurrent requests
    into model calls: :class:`Batcher` in this process, or its twin on Ray Serve
    (:class:`xcam.serve.ray_engine.RayBatcher`, ``@serve.batch``), which takes the same
    arguments."""
    # a file's name, not its path: the server's folders are nobody's business
    model_name = PurePath(str(explainer.settings().get("model"))).name
    metrics = Metrics()
    # images decoded at once, server-wide: a decoded image is ~3 bytes a pixel
    decoding = asyncio.Semaphore(os.cpu_count() or 2)
    batching = batcher(explainer, max_batch, max_wait_ms, on_batch=metrics.batch)

    @asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        await batching.start()
        yield
        await batching.stop()

    # no /docs or /redoc: their pages load from a CDN (blank offline); GET / is the page
    app = FastAPI(title="xcam", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.metrics = batching, metrics

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        metrics.request(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(RequestError)
    async def refused(_request: Request, e: RequestError):
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, e: StarletteHTTPException):  # 404, 405: JSON too
        where = f"{request.method} {request.url.path}"
        if e.status_code == 405:
            allowed = e.headers.get("Allow", "") if e.headers else ""
            message = f"{where}: use {' or '.join(allowed.split(', ')) or 'another method'}"
        elif e.status_code == 404:
            message = f"{where}: no such route (the routes: {', '.join(ROUTES)})"
        else:
            message = f"{where}: {e.detail}"
        return JSONResponse({"error": message}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def failed(_request: Request, e: Exception):  # still JSON, still one line
        text = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {text[0] if text else ''}"
        return JSONResponse({"error": f"the server failed on this request ({reason})"}, 500)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError):
        where = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            for err in e.errors()
        )
        return JSONResponse({"error": f"invalid request ({where})"}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return _page()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        settings = explainer.settings()
        return {
            "model": model_name,
            "method": explainer.name,
            "methods": [explainer.name],
            "layers": settings.get("layers"),
            "backend": settings.get("backend"),
            "input_size": list(explainer.input_size),
            "mean": list(explainer.mean),
            "std": list(explainer.std),
            "classes": explainer.classes,
            "num_classes": getattr(explainer, "num_classes", None),
            "torch": "torch" in sys.modules,  # False: an in-graph file served by numpy + ORT
            "engine": batching.engine,
            "limits": {
                "max_batch": max_batch,
                "max_wait_ms": max_wait_ms,
                "max_body": max_body,
                "max_pixels": max_pixels,
                "max_images": MAX_IMAGES,
                "max_pending": max_pending,
            },
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, media = metrics.text()
        return Response(body, media_type=media)

    @app.post("/v1/explain")
    async def explain(
        request: Request,
        target: str | None = None,
        map: str = "png",
        overlay: str = "0",
        method: str | None = None,
    ) -> dict[str, Any]:
        """Explain the request's images (see the module's docstring)."""
        # bodies and decoded images wait for the model in memory: bound how many
        if metrics.in_flight_now >= max_pending:
            raise RequestError(
                503,
                f"the server is busy: it explains {max_pending} "
                f"request{'s' if max_pending > 1 else ''} at most at once; retry shortly "
                "(xcam serve --max-pending raises the limit)",
                {"Retry-After": "1"},
            )
        with metrics.explaining():
            return await _explain(request, target, map, overlay, method)

    async def _explain(
        request: Request, target: str | None, map: str, overlay: str, method: str | None
    ) -> dict[str, Any]:
        want_overlay = _flag("overlay", overlay)
        if map not in MAP_FORMATS:
            raise RequestError(400, f"map={map!r}: one of {', '.join(MAP_FORMATS)}")
        _check_method(method, explainer.name)
        label = _label(target, explainer)
        uploads = await _uploads(request, max_body)
        decoded = []
        budget = max_pixels  # of the whole request: 64 small files can't each be a bomb
        for name, data in uploads:
            try:
                async with decoding:
                    image, x = await run_in_threadpool(decode_upload, data, name, explainer, budget)
            except TooManyPixels as e:  # said for the service: its limit, its option
                raise RequestError(
                    400,
                    f"{name}: {e.width}x{e.height} = {e.width * e.height} pixels is above the "
                    f"limit of {max_pixels} pixels for a request's images in all (xcam serve "
                    "--max-pixels; a guard against decompression bombs)",
                ) from None
            except InputError as e:
                raise RequestError(400, str(e)) from None
            decoded.append((name, image, x))
            if budget is not None:
                budget = max(budget - image.width * image.height, 1)
        try:
            found = await asyncio.gather(
                *(batching.explain(x, label, name) for name, _image, x in decoded)
            )
        except NumericalError as e:
            raise RequestError(500, f"the model failed on this request: {e}") from None
        for result in found:
            if isinstance(result, str):  # a target the model can't explain
                raise RequestError(400, result)
        images = [
            await run_in_threadpool(answer, name, image, result, map, want_overlay, alpha, colormap)
            for (name, image, _x), result in zip(decoded, found, strict=True)
        ]
        return {
            "model": explainer.settings().get("model"),
            "method": explainer.name,
            "images": images,
        }

    return app


@functools.cache
def _page() -> str:
    """The page at ``/``: drop an image, see the prediction, the overlay and the map (plain
    HTML and JavaScript, no build step: ``page.html`` beside this module)."""
    from importlib.resources import files

    return files("xcam.serve").joinpath("page.html").read_text(encoding="utf-8")


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text not in TRUE + FALSE:
        raise RequestError(400, f"{name}={value!r}: 1 or 0 (true or false)")
    return text in TRUE


def _check_method(method: str | None, served: str) -> None:
    from xcam.core.names import method_key

    if method is not None and method_key(method) != method_key(served):
        raise RequestError(
            400,
            f"method={method!r} is not served here: this server explains with {served} "
            "(start xcam serve with --method for another)",
        )


def _label(target: str | None, explainer: BatchExplainer) -> int | None:
    """``target=`` as a class index: an index, a class name, positive / negative for a
    single-logit head; None explains each image's top-1 class."""
    from xcam.pipeline.job import label_of
    from xcam.pipeline.sources import parse_label

    if target is None or not target.strip():
        return None
    if not getattr(explainer, "takes_targets", True):
        raise RequestError(
            400,
            f"target={target!r}: this model explains each image's top-1 class only (its file "
            "has no target input: export it with --target-input to choose the class)",
        )
    try:
        return label_of(parse_label(target), explainer)
    except InputError as e:
        raise RequestError(400, f"target={target!r}: {e}") from None


async def _uploads(request, limit: int) -> list[tuple[str, bytes]]:
    """The request's images as (name, bytes): each file field of a multipart body, or the
    whole body of an ``image/*`` or ``application/octet-stream`` request."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = media == "multipart/form-data"
    if not (multipart or media.startswith("image/") or media == "application/octet-stream"):
        raise RequestError(
            415,
            f"content type {media or '(none)'} is not an image: send the image's bytes "
            "(image/* or application/octet-stream) or multipart/form-data file fields",
        )
    body = await _body(request, limit)
    if not multipart:
        return [(_name(request.headers.get("x-filename"), 0), body)]
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def once() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        request.headers, once(), max_files=MAX_IMAGES, max_fields=MAX_IMAGES, max_part_size=limit
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many"):  # a limit, not a malformed body
            raise RequestError(400, f"over {MAX_IMAGES} images in one request") from None
        raise RequestError(400, f"a malformed multipart body ({e.message})") from None
    files = [v for _k, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise RequestError(400, "a multipart body without a file field: send each image as one")
    uploads = [(_name(f.filename, i), await f.read()) for i, f in enumerate(files)]
    await form.close()
    return uploads


async def _body(request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to pass ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RequestError(413, f"the body is {int(length)} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise RequestError(400, "an empty body: send an image")
    return b"".join(chunks)


def _name(filename: str | None, i: int) -> str:
    """What an answer calls an upload: its file name without any folder (names are only
    echoed back, never opened), else ``image<i>``."""
    name = PurePath((filename or "").replace("\\", "/")).name
    return name[:200] if name else f"image{i}"


class Metrics:
    """Prometheus metrics of one app (its own registry: two apps in a process don't mix)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.in_flight_now = 0
        self.in_flight = Gauge(
            "xcam_requests_in_flight", "Explain requests being answered", registry=self.registry
        )
        self.requests = Counter(
            "xcam_requests", "HTTP requests", ["path", "status"], registry=self.registry
        )
        self.errors = Counter(
            "xcam_errors",
            "Requests answered 4xx or 5xx",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xcam_request_seconds",
            "Time from request to response",
            ["path"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "xcam_batch_size",
            "Images per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "xcam_batch_seconds", "Time of a model call", registry=self.registry
        )

    def request(self, path: str, status: int, seconds: float) -> None:
        path = path if path in ROUTES else "other"  # a bounded set of labels
        self.requests.labels(path, str(status)).inc()
        if status >= 400:
            self.errors.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    @contextmanager
    def explaining(self) -> Iterator[None]:
        """Counts an explain request in flight while the block runs."""
        self.in_flight_now += 1
        self.in_flight.set(self.in_flight_now)
        try:
            yield
        finally:
            self.in_flight_now -= 1
            self.in_flight.set(self.in_flight_now)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
