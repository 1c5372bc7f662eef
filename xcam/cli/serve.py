"""``xcam serve``: explanations over HTTP (:mod:`xcam.serve`), one process under uvicorn."""

from __future__ import annotations

import functools
import os
import signal
import threading

import click

from xcam.cli.messages import fail
from xcam.cli.options import MethodOption, engine_options, trust_options

_UNITS = {"": 1, "B": 1, "KB": 2**10, "K": 2**10, "MB": 2**20, "M": 2**20, "GB": 2**30, "G": 2**30}


def parse_bytes(value: str) -> int:
    """``8MB``, ``512KB``, ``1048576`` as bytes (binary units)."""
    text = value.strip().upper().replace(" ", "")
    number = text.rstrip("BKMG")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or amount <= 0:
        raise click.BadParameter(
            f"{value!r}: a size such as 8MB, 512KB or 1048576", param_hint="--max-body"
        )
    return int(amount * _UNITS[unit])


def _check_address(host: str, port: int) -> None:
    """The server can listen on ``host:port``: said in one line before anything loads, rather
    than in the server's log (uvicorn) or a traceback from Ray's proxy."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise click.BadParameter(f"{host!r}: {e.strerror}", param_hint="--host") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                fail(f"{host}:{port} is in use (another server?): choose another --port")
            fail(f"can't listen on {host}:{port}: {e.strerror}")


@click.command()
@trust_options
@click.argument("model")
@click.option(
    "--method",
    "-m",
    cls=MethodOption,
    default="gradcam",
    show_default=True,
    help="Method: one of the registered names.",
)
@click.option("--layer", "-l", "layer", multiple=True, help="Target layer (repeat to fuse).")
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict for the model.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface; this machine only by default).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--max-batch",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Most images in one model call (dynamic batching).",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="How long a model call waits for more images after the first.",
)
@click.option(
    "--max-body", default="8MB", show_default=True, help="Largest request body (413 above)."
)
@click.option(
    "--max-pixels",
    type=click.IntRange(1),
    default=40_000_000,
    show_default=True,
    help="Most pixels of one request's images (400 above: a guard against decompression bombs).",
)
@click.option(
    "--max-pending",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Most explain requests in flight at once (503 with Retry-After above; per replica).",
)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--colormap", default="jet", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="ONNX Runtime's threads (default: all; with --engine ray, the cores / --replicas).",
)
@engine_options("this process under uvicorn", "a Ray Serve deployment", "serve-ray")
@click.option(
    "--replicas",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="ray: replicas, each holding one model (with --device cuda, one GPU each).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
def serve(
    model: str,
    method: str,
    layer: tuple[str, ...],
    weights: str | None,
    device: str,
    host: str,
    port: int,
    max_batch: int,
    max_wait_ms: float,
    max_body: str,
    max_pixels: int,
    max_pending: int,
    alpha: float,
    colormap: str,
    threads: int | None,
    engine: str,
    replicas: int,
    ray_address: str | None,
    log_level: str,
) -> None:
    """Serve explanations of MODEL over HTTP: POST an image to /v1/explain, get the top-k,
    the target, its score and the map (JSON).

    \b
    MODEL is a file made by `xcam export` (one exported with --gradients is served without
    torch), 'demo', 'torchvision:NAME', 'timm:NAME' or 'package.module:factory'.
    Routes: POST /v1/explain, GET /v1/model, /healthz, /metrics (Prometheus).
    Requests that arrive within --max-wait-ms share one model call of up to --max-batch
    images. --engine ray serves the same app from --replicas Ray Serve replicas.
    """
    from xcam.core.errors import XCamError
    from xcam.viz import check_colormap

    limit = parse_bytes(max_body)
    if not (engine == "ray" and ray_address):  # a cluster's proxy listens on its head
        _check_address(host, port)
    try:
        check_colormap(colormap)
    except (ValueError, XCamError) as e:
        raise click.BadParameter(str(e), param_hint="--colormap") from None
    meta = click.get_current_context().meta
    try:
        import uvicorn

        from xcam.pipeline.dataset import default_threads, make_explainer
        from xcam.serve import make_app
    except ImportError as e:
        fail(f"xcam serve needs {e.name}: pip install 'xcam-deploy[serve]'")
    if engine == "ray" and threads is None and ray_address is None:
        threads = default_threads(replicas)  # the replicas share this machine's cores
    factory = functools.partial(
        make_explainer,
        model,
        method,
        layers=list(layer) or None,
        weights=weights,
        device=device,
        trust_code=meta.get("xcam.trust_code", False),
        trust_weights=meta.get("xcam.trust_weights", False),
        threads=threads,
    )
    try:
        # loaded here first, with Ray too: a model that can't load is said in one line
        explainer = factory()
    except XCamError as e:
        fail(str(e))
    app_options = {
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "max_body": limit,
        "max_pixels": max_pixels,
        "max_pending": max_pending,
        "alpha": alpha,
        "colormap": colormap,
    }
    name, where = explainer.name, f"http://{host}:{port}"
    routes = "POST /v1/explain, GET /v1/model /healthz /metrics"
    # a server stops on SIGINT / SIGTERM and exits 0 (as it should), not with the signal
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _sig, _frame: stop.set())
    if engine == "ray":
        try:
            from xcam.serve.ray_engine import served_on_ray
        except ImportError as e:
            fail(f"--engine ray needs Ray Serve: pip install 'xcam-deploy[serve-ray]' ({e})")
        del explainer  # each replica loads its own
        click.echo(f"starting {replicas} Ray Serve replica(s) of {model}", err=True)
        try:
            with served_on_ray(
                factory,
                app_options,
                replicas=replicas,
                host=host,
                port=port,
                address=ray_address,
                # on this machine's own Ray the replicas share its cores, however many
                num_cpus=(os.cpu_count() or 1) / replicas if ray_address is None else threads or 1,
                num_gpus=1.0 if device == "cuda" else 0.0,
                log_level=log_level,
                stop=stop,
            ):
                if not stop.is_set():  # else stopped while the replicas started
                    click.echo(
                        f"serving {model} ({name}) on {where} from Ray Serve: {routes}", err=True
                    )
                while not stop.wait(0.5):
                    pass
                click.echo("stopping", err=True)
        except XCamError as e:
            fail(str(e))
        click.echo("stopped", err=True)
        return
    app = make_app(explainer, **app_options)
    click.echo(f"serving {model} ({name}) on {where}: {routes}", err=True)
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again for
    # the handler it found: the one above, so that the process exits 0
    uvicorn.run(app, host=host, port=port, log_level=log_level)
    click.echo("stopped", err=True)
