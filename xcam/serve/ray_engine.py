"""``xcam serve --engine ray``: the same app as a Ray Serve deployment, in replicas.

Each replica builds its own explainer (one model or ONNX Runtime session) and the app of
:func:`~xcam.serve.app.make_app` around it; Ray Serve's proxy spreads requests over the
replicas, and within a replica ``@serve.batch`` gathers the images of concurrent requests
into one model call (:class:`RayBatcher`, the twin of the local
:class:`~xcam.serve.batcher.Batcher`). Routes, limits and answers are the app's: a client
can't tell the engines apart, except by ``GET /v1/model``'s ``"engine"``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import ray
from ray import serve

from xcam.core.errors import XCamError
from xcam.pipeline.batch import BatchExplainer, Explained
from xcam.pipeline.ray_engine import ray_reason
from xcam.serve.app import MAX_PENDING, make_app
from xcam.serve.batcher import Batcher

APP_NAME = "xcam"


class RayBatcher(Batcher):
    """Batches the images of a replica's concurrent requests with Ray Serve's
    ``@serve.batch`` (``max_batch`` images, ``max_wait_ms`` after the first); each batch is
    explained as :class:`Batcher` explains one (its model thread, one image's failure its
    request's alone). Its arguments and limits are :class:`Batcher`'s; the queue is Ray's."""

    engine = "ray"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batched = serve.batch(
            max_batch_size=self.max_batch, batch_wait_timeout_s=self.max_wait
        )(self._explain_batch)

    async def start(self) -> None:
        """Nothing to start: ``@serve.batch`` runs its queue on the replica's event loop."""

    async def explain(self, x: np.ndarray, label: int | None, name: str) -> Explained | str:
        """As :meth:`xcam.serve.batcher.Batcher.explain`."""
        result = await self._batched(({"image": name}, None, x, label))
        if isinstance(result, Exception):
            raise result
        return result


@serve.ingress()
class Replica:
    """One replica of the service: its own explainer, made by ``factory`` (pickled to the
    replica: a :func:`functools.partial` of :func:`xcam.pipeline.dataset.make_explainer`,
    say), and the app around it with ``app_options`` (:func:`~xcam.serve.app.make_app`'s)."""

    def __init__(self, factory: Callable[[], BatchExplainer], app_options: dict[str, Any]) -> None:
        self.explainer = factory()
        self.app_options = app_options

    def __serve_build_asgi_app__(self):
        return make_app(self.explainer, batcher=RayBatcher, **self.app_options)


@contextmanager
def served_on_ray(
    factory: Callable[[], BatchExplainer],
    app_options: dict[str, Any],
    *,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    log_level: str = "info",
    stop: threading.Event | None = None,
) -> Iterator[None]:
    """The service on Ray Serve at ``http://host:port/`` while the block runs: ``replicas``
    replicas, each with ``num_cpus`` CPUs and ``num_gpus`` GPUs reserved. A Ray already
    initialised in this process is used as it is; otherwise ``ray.init`` starts a local
    cluster (or joins ``address``) and shuts it down afterwards. Enters once every replica
    has loaded its model, or once ``stop`` is set (replicas waiting for resources can wait
    forever); a model that fails to load raises :class:`XCamError`. On the way out the
    replicas finish the requests they hold. The replicas log at ``log_level`` (each
    request at info and debug)."""
    if replicas < 1:
        raise ValueError(f"replicas must be 1 or more, got {replicas}")
    own = not ray.is_initialized()
    if own:
        try:
            _keeping_signals(
                lambda: ray.init(address=address, include_dashboard=False, logging_level="warning")
            )
        except Exception as e:  # an address with no cluster behind it, say
            where = f"join the Ray cluster at {address}" if address else "start a local Ray"
            raise XCamError(f"could not {where}: {ray_reason(e)}") from e
    log_config = {
        "log_level": log_level.upper(),
        "enable_access_log": log_level in ("info", "debug"),
    }
    logging.getLogger("ray.serve").setLevel(log_level.upper())  # Serve's own, in this process
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=log_config)
        deployment = serve.deployment(
            Replica,
            name="xcam",
            num_replicas=replicas,
            # the app bounds its own work (requests in flight, decoding threads, batches):
            # let its requests reach it, with room for /healthz and /metrics beside them
            max_ongoing_requests=app_options.get("max_pending", MAX_PENDING) + 8,
            ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
            logging_config=log_config,
        )
        failed: list[BaseException] = []

        def deploy() -> None:
            try:
                serve.run(deployment.bind(factory, app_options), name=APP_NAME, route_prefix="/")
            except BaseException as e:
                failed.append(e)

        # serve.run waits for every replica, which may wait for resources a long time: in a
        # thread, so that a stop (a signal handled in this one) still ends the wait
        starting = threading.Thread(target=deploy, name="xcam-serve-run", daemon=True)
        starting.start()
        while starting.is_alive() and not (stop is not None and stop.is_set()):
            starting.join(0.25)
        if failed:  # a replica that can't load the model: its reason, in a line
            raise XCamError(f"Ray Serve could not start the service: {ray_reason(failed[0])}")
        yield
    finally:
        # the replicas answer the requests they hold before they go, the proxy with them;
        # never deployed, or Ray already gone: shut down all the same
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        try:
            serve.shutdown()
        finally:
            if own:
                ray.shutdown()


def _keeping_signals(start: Callable[[], Any]) -> None:
    """``start()`` with the process's SIGINT and SIGTERM handlers as they were before:
    ``ray.init`` puts in its own, which abort the process instead of letting it stop."""
    if threading.current_thread() is not threading.main_thread():
        start()
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        start()
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


__all__ = ["RayBatcher", "Replica", "served_on_ray"]
