"""A bounded load test of ``xcam serve`` on 127.0.0.1: N clients for a fixed time, then stop.

Arms, on the in-graph resnet50 file (seeded weights, layer4, ``xcam export --gradients``)
served as ``xcam serve`` runs it (a fresh process per arm), JPEGs of 256–320 px:

- ``offline``: the same file in one ONNX Runtime session on batches of 8 preprocessed
  images (no HTTP, no decoding): the throughput a server can at best approach; and on
  batches of 1: what batching can at best gain is the ratio of the two;
- ``dynamic batching``: ``--max-batch 8 --max-wait-ms 5`` at 1, 4 and 16 concurrent
  clients, each sending one image a request over a kept-alive connection, for
  ``--seconds`` each: images/s, p50 and p99 latency, failed requests;
- ``batch 1``: ``--max-batch 1`` at 16 clients;
- ``wait 25 ms``: ``--max-batch 8 --max-wait-ms 25`` at 16 clients (a batch waits longer);
- ``Ray Serve``: ``--engine ray`` (its own local Ray) with 1 and 2 replicas at 16 clients,
  ``--max-batch 8 --max-wait-ms 5`` (``@serve.batch``), each replica's ONNX Runtime on
  the cores / replicas threads;
- memory: the demo model's in-graph file served to 16 clients for ``--requests`` requests:
  the server's resident memory after the first 1,000 and after the last.

Results: ``results/serve.{json,md}``. From the repository root:
``.venv/bin/python benchmarks/serve_load.py`` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``xcam serve FILE …`` in a subprocess, up once /healthz answers."""

    def __init__(self, model: Path, *options: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "xcam.cli", "serve", str(model), "--port", str(self.port)]
        cmd += ["--log-level", "warning", *options]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180  # Ray Serve starts a cluster first
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"xcam serve did not start: {' '.join(cmd)}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body, {"Content-Type": "image/jpeg"} if body else {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def rss_mib(self) -> tuple[float, float]:
        """The server's resident memory now and at its peak (MiB)."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def load(server: Server, images: list[bytes], clients: int, seconds=None, requests=None):
    """``clients`` threads, each a kept-alive connection sending one image a request, until
    ``seconds`` pass or ``requests`` are sent in all; latencies (s) and failures."""
    latencies: list[float] = []
    failed = [0]
    sent = [0]
    lock = threading.Lock()
    stop_at = None if seconds is None else time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        i = k
        while True:
            with lock:
                if (requests is not None and sent[0] >= requests) or (
                    stop_at is not None and time.perf_counter() >= stop_at
                ):
                    break
                sent[0] += 1
            body = images[i % len(images)]
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/explain", body, {"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            with lock:
                latencies.append(time.perf_counter() - t)
                failed[0] += not ok
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {
        "clients": clients,
        "requests": len(lat),
        "failed": failed[0],
        "seconds": wall,
        "images_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
    }


def offline(model: Path, images: list[bytes], seconds: float, batch: int = 8) -> dict:
    """The file in one ONNX Runtime session, batches of ``batch`` preprocessed images."""
    import onnxruntime as ort

    from xcam.images import image_from_bytes, preprocess_array
    from xcam.pipeline.lite_batch import LiteBatch

    lite = LiteBatch(model)
    pictures = [image_from_bytes(b) for b in images[:batch]]
    x = preprocess_array(pictures, lite.input_size, lite.mean, lite.std)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x})  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {name: x})
        done += len(x)
    return {"images_per_s": done / (time.perf_counter() - started)}


def memory(cache: Path, requests: int, every: int | None = None) -> dict:
    """The demo model's in-graph file served to 16 clients for ``requests`` requests of
    small JPEGs: the server's resident memory after the first 1,000, after the last (and
    after each ``every``)."""
    from dataset import demo_file, make_images

    demo = demo_file(cache / "models")
    small = make_images(cache / "small1000", 1000, (96, 128), 2)
    small_images = [f.read_bytes() for f in sorted(small.glob("*.jpg"))[:200]]
    server = Server(demo, "--max-batch", "8")
    try:
        print(f"memory: {requests} requests", file=sys.stderr)
        first = load(server, small_images, 16, requests=1000)
        after_first = server.rss_mib()
        sent, failed, curve, rest = first["requests"], first["failed"], [], first
        while sent < requests:
            step = min(every or requests, requests - sent)
            rest = load(server, small_images, 16, requests=step)
            sent, failed = sent + rest["requests"], failed + rest["failed"]
            curve.append([sent, server.rss_mib()[0]])
        return {
            "requests": sent,
            "failed": failed,
            "rss_after_1000_mib": after_first[0],
            "rss_after_all_mib": server.rss_mib()[0],
            "peak_rss_mib": server.rss_mib()[1],
            "images_per_s": rest["images_per_s"],
            "rss_mib_by_requests": curve,
        }
    finally:
        server.stop()


def main() -> None:
    from dataset import make_images, models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="per load arm")
    p.add_argument("--requests", type=int, default=10_000, help="of the memory arm")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "xcam-dataset")
    p.add_argument("--out", type=Path, default=RESULTS / "serve")
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="only the memory arm, its resident memory every 5,000 requests -> "
        "results/serve_memory.json",
    )
    args = p.parse_args()
    if args.memory_only:
        found = memory(args.cache, args.requests, every=5000)
        path = RESULTS / "serve_memory.json"
        path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **found}, indent=2) + "\n")
        print(json.dumps(found, indent=2))
        return
    files = models(args.cache / "models")
    folder = make_images(args.cache / "imgs96", 96, (256, 320), 0)
    images = [f.read_bytes() for f in sorted(folder.glob("*.jpg"))]
    result: dict = {"cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}

    print("offline", file=sys.stderr)
    result["offline"] = offline(files["cam"], images, args.seconds)
    result["offline1"] = offline(files["cam"], images, args.seconds, batch=1)
    server = Server(files["cam"], "--max-batch", "8", "--max-wait-ms", "5")
    try:
        load(server, images, 4, seconds=3)  # warm-up
        result["batched"] = {}
        for clients in (1, 4, 16):
            print(f"dynamic batching, {clients} clients", file=sys.stderr)
            result["batched"][clients] = load(server, images, clients, seconds=args.seconds)
        _, metrics = server.request("GET", "/metrics")
        result["batch_sizes"] = [
            line for line in metrics.decode().splitlines() if line.startswith("xcam_batch_size")
        ]
    finally:
        server.stop()
    server = Server(files["cam"], "--max-batch", "1")
    try:
        load(server, images, 4, seconds=3)
        print("batch 1, 16 clients", file=sys.stderr)
        result["batch1"] = load(server, images, 16, seconds=args.seconds)
    finally:
        server.stop()

    for name, options in (
        ("wait25", ("--max-batch", "8", "--max-wait-ms", "25")),
        ("ray1", ("--engine", "ray", "--replicas", "1", "--max-batch", "8")),
        ("ray2", ("--engine", "ray", "--replicas", "2", "--max-batch", "8")),
    ):
        server = Server(files["cam"], *options)
        try:
            load(server, images, 4, seconds=3)
            print(f"{' '.join(options)}, 16 clients", file=sys.stderr)
            result[name] = load(server, images, 16, seconds=args.seconds)
        finally:
            server.stop()

    result["memory"] = memory(args.cache, args.requests)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def markdown(r: dict) -> str:
    b16, one = r["batched"][16], r["batch1"]
    lines = [
        "# Serving explanations: a bounded load test of `xcam serve`",
        "",
        f"In-graph resnet50 file (seeded weights, layer4, `xcam export --gradients`), 224², "
        f"JPEGs of 256–320 px, one image a request over kept-alive connections, "
        f"{r['cpu_count']} CPUs, {r['date']} (`benchmarks/serve_load.py`). The server is "
        "`xcam serve FILE` (numpy + ONNX Runtime, no torch) in its own process.",
        "",
        "| arm | clients | images/s | p50 (ms) | p99 (ms) | requests | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| offline ORT, batch 8 (no HTTP, no decoding) | – | "
        f"{r['offline']['images_per_s']:.1f} | | | | |",
        f"| offline ORT, batch 1 | – | {r['offline1']['images_per_s']:.1f} | | | | |",
    ]
    for clients, v in r["batched"].items():
        lines.append(
            f"| dynamic batching (8, 5 ms) | {clients} | {v['images_per_s']:.1f} | "
            f"{v['p50_ms']:.0f} | {v['p99_ms']:.0f} | {v['requests']} | {v['failed']} |"
        )
    for name, arm in (
        ("batch1", "batch 1"),
        ("wait25", "dynamic batching (8, 25 ms)"),
        ("ray1", "Ray Serve, 1 replica (8, 5 ms)"),
        ("ray2", "Ray Serve, 2 replicas (8, 5 ms)"),
    ):
        v = r[name]
        lines.append(
            f"| {arm} | 16 | {v['images_per_s']:.1f} | {v['p50_ms']:.0f} | "
            f"{v['p99_ms']:.0f} | {v['requests']} | {v['failed']} |"
        )
    m = r["memory"]
    failed = sum(v["failed"] for v in r["batched"].values()) + m["failed"]
    failed += sum(r[name]["failed"] for name in ("batch1", "wait25", "ray1", "ray2"))
    lines += [
        "",
        "| goal | measured |",
        "| --- | --- |",
        f"| 16 clients / offline ORT (≥ 0.8) | "
        f"{b16['images_per_s'] / r['offline']['images_per_s']:.2f} |",
        f"| dynamic batching / batch 1 at 16 clients (≥ 1.5) | "
        f"{b16['images_per_s'] / one['images_per_s']:.2f} (offline, batch 8 / batch 1: "
        f"{r['offline']['images_per_s'] / r['offline1']['images_per_s']:.2f}) |",
        f"| failed requests under load (0) | {failed} |",
        f"| server memory after 1,000 / {m['requests']:,} requests (flat; the demo model's "
        f"file) | {m['rss_after_1000_mib']:.0f} / {m['rss_after_all_mib']:.0f} MiB "
        f"(peak {m['peak_rss_mib']:.0f}) |",
        f"| Ray Serve / embedded at 16 clients, 1 and 2 replicas | "
        f"{r['ray1']['images_per_s'] / b16['images_per_s']:.2f} and "
        f"{r['ray2']['images_per_s'] / b16['images_per_s']:.2f} |",
        "",
        "Batch sizes of the dynamic-batching server (Prometheus histogram):",
        "",
        "```",
        *r["batch_sizes"],
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
