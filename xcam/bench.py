"""``xcam bench``: what an explanation costs, per method, backend, device and batch size.

For every model x device x backend x batch, the *arms* — plain inference on that backend
(the floor), each method through xcam, and on the eager backend the same methods from the
peer libraries (pytorch-grad-cam, torchcam, captum) — are timed side by side: one warm-up
call each, then ``repeats`` rounds in a rotating order, so machine drift and the threads
one arm leaves spinning hit every arm alike. CUDA arms synchronise the device. Each row
gives the median and the 10th/90th percentiles, the ratio to plain inference on the same
backend and device, and images per second.

Backends: ``eager``; ``torchscript``, ``onnxruntime`` and ``pt2`` (activations from the
exported file, gradients from the eager tail; the floor is the plain model exported the
same way); ``ingraph`` (an ONNX file exported with gradients: the gradient methods read
them from the file; the floor is plain ONNX Runtime). On ``onnxruntime`` the arm
``activations`` is the exported forward alone (logits and activations).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xcam.core.artifact import FORMATS, format_of
from xcam.core.errors import XCamError
from xcam.core.tracing import TRACE_LOCK

BACKENDS = ("eager", "torchscript", "onnxruntime", "pt2", "ingraph")
PEERS = ("pytorch-grad-cam", "torchcam", "captum")
# methods whose gradients an exported-with-gradients file provides (the rest need the eager model)
INGRAPH_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam")

PRESETS: dict[str, dict[str, Any]] = {
    # a smoke run: about a minute on 2 CPU cores
    "quick": {
        "models": ["torchvision:resnet18"],
        "methods": ["gradcam"],
        "backends": ["eager", "onnxruntime"],
        "devices": ["cpu"],
        "batches": [1],
        "input_size": 112,
        "repeats": 5,
        "peers": True,
    },
    # the committed results (benchmarks/results/bench_*.{json,md,png})
    "full": {
        "models": ["torchvision:resnet50"],
        "methods": ["gradcam", "gradcam++", "layercam"],
        "backends": ["eager", "torchscript", "onnxruntime", "ingraph"],
        "devices": ["cpu"],
        "batches": [1, 32],
        "input_size": 224,
        "repeats": 5,
        "peers": True,
    },
}


@dataclass
class BenchConfig:
    models: list[str]
    methods: list[str]
    backends: list[str]
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    batches: list[int] = field(default_factory=lambda: [1])
    input_size: int | None = None
    repeats: int = 5
    peers: bool = False
    layer: str | None = None
    threads: int | None = None

    def check(self) -> None:
        from xcam.methods import get_method

        for m in self.methods:
            get_method(m)  # an unknown name lists the available ones
        files = [m for m in self.models if format_of(m) is not None]
        if files:  # refused before anything reads them: an exported file may carry code
            raise XCamError(
                f"{', '.join(files)}: bench times a PyTorch model against its own exports "
                "(--backends), so give the model's spec (demo, torchvision:NAME, "
                "package.module:factory), not an exported file"
            )
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise XCamError(f"unknown backend(s) {', '.join(bad)}; one of {', '.join(BACKENDS)}")
        bad = [d for d in self.devices if d not in ("cpu", "cuda")]
        if bad:
            raise XCamError(f"unknown device(s) {', '.join(bad)}; cpu or cuda")
        if "cuda" in self.devices and not torch.cuda.is_available():
            raise XCamError("--devices cuda was asked for, but CUDA is not available here")
        if any(b < 1 for b in self.batches) or self.repeats < 1:
            raise XCamError("batch sizes and --repeats must be positive")


@dataclass
class Row:
    model: str
    layer: str
    method: str  # "inference", "activations", or a method name
    library: str  # "xcam", a peer's name, or "torch" / "onnxruntime" for the floor
    backend: str
    device: str
    batch: int
    input_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    ratio_to_inference: float
    images_per_s: float


@dataclass
class BenchReport:
    rows: list[Row]
    env: dict[str, Any]
    notes: list[str]
    goals: list[dict[str, Any]]

    def to_json(self) -> str:
        context = {
            "versions": self.env.get("versions"),
            "machine": {k: self.env.get(k) for k in ("machine", "cpu", "cpu_count", "gpu")},
            "threads": self.env.get("threads"),
        }
        payload = {
            "env": self.env,
            "rows": [{**asdict(r), **context} for r in self.rows],
            "goals": self.goals,
            "notes": self.notes,
        }
        return json.dumps(payload, indent=2) + "\n"


# --- timing --------------------------------------------------------------------------------------


def measure(
    arms: dict[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each arm, ``repeats`` each after one warm-up call. Arms run
    interleaved round by round in a rotating order: whichever arm follows another pays for
    the threads it left spinning, so no arm may always sit in the same place."""
    for fn in arms.values():
        fn()
    if sync is not None:
        sync()
    times: dict[str, list[float]] = {k: [] for k in arms}
    keys = list(arms)
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            arms[key]()
            if sync is not None:
                sync()
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def spread(ms: list[float]) -> tuple[float, float, float]:
    """(median, 10th percentile, 90th percentile), by linear interpolation."""
    if len(ms) == 1:
        return ms[0], ms[0], ms[0]
    q = statistics.quantiles(ms, n=10, method="inclusive")
    return statistics.median(ms), q[0], q[-1]


# --- the floor on each backend -------------------------------------------------------------------


def ort_session(path: Path, threads: int | None, device: str = "cpu"):
    """A session made as xcam's ONNX Runtime backend makes it (same threads, no spinning)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), opts, providers=providers)


def export_plain(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The model alone, logits only, by the exporter xcam uses, with a dynamic batch."""
    with TRACE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            verbose=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
    return path


def _plain_floor(backend: str, model: nn.Module, example: torch.Tensor, tmp: Path, threads):
    """``x -> logits`` for plain inference on ``backend``."""
    device = example.device.type
    if backend == "eager":

        def eager(x: torch.Tensor) -> object:
            with torch.inference_mode():
                return model(x)

        return eager
    if backend == "torchscript":
        with TRACE_LOCK, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(model, example))

        def scripted(x: torch.Tensor) -> object:
            with torch.inference_mode():
                return traced(x)

        return scripted
    if backend == "pt2":
        batch = torch.export.Dim("batch", min=1, max=1024)
        with TRACE_LOCK:
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        program = program.module()

        def exported(x: torch.Tensor) -> object:
            with torch.inference_mode():
                return program(x)

        return exported
    session = ort_session(export_plain(model, example, tmp / "plain.onnx"), threads, device)
    if device == "cuda":
        return lambda x: session.run(["logits"], {"input": x.cpu().numpy()})
    return lambda x: session.run(["logits"], {"input": x.numpy()})


# --- peers ---------------------------------------------------------------------------------------

_GRAD_CAM_LIB = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad",
}
_TORCHCAM = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}
_CAPTUM = {"gradcam": "LayerGradCam", "guidedbackprop": "GuidedBackprop"}


def peer_arm(library: str, method: str, model: nn.Module, layer: str):
    """``(x, classes) -> maps`` from a peer library, or a string saying why there is none.

    Each call constructs the peer's object and removes its hooks at the end, so the hooks
    never slow down the other arms that share the model."""
    try:
        if library == "pytorch-grad-cam":
            os.environ.setdefault("TQDM_DISABLE", "1")  # it prints a bar per sample
            import pytorch_grad_cam
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        elif library == "torchcam":
            import torchcam.methods
        else:
            import captum.attr
    except ImportError:
        return f"{library} is not installed (pip install 'xcam-deploy[bench]')"
    module = model.get_submodule(layer)
    if library == "pytorch-grad-cam":
        if method not in _GRAD_CAM_LIB:
            return None
        cls = getattr(pytorch_grad_cam, _GRAD_CAM_LIB[method])

        def grad_cam_lib(x: torch.Tensor, classes: torch.Tensor) -> object:
            targets = [ClassifierOutputTarget(int(c)) for c in classes]
            with cls(model=model, target_layers=[module]) as cam:
                return cam(input_tensor=x, targets=targets)

        return grad_cam_lib
    if library == "torchcam":
        if method not in _TORCHCAM:
            return None
        tcls = getattr(torchcam.methods, _TORCHCAM[method])

        def torchcam_arm(x: torch.Tensor, classes: torch.Tensor) -> object:
            extractor = tcls(model, target_layer=layer, input_shape=tuple(x.shape[1:]))
            try:
                with torch.enable_grad():
                    scores = model(x)
                    return extractor(class_idx=classes.tolist(), scores=scores)
            finally:
                extractor.remove_hooks()

        return torchcam_arm
    if method not in _CAPTUM:
        return None
    if method == "gradcam":
        gc = captum.attr.LayerGradCam(model, module)
        return lambda x, classes: gc.attribute(x, target=classes.tolist())
    gb = captum.attr.GuidedBackprop(model)
    return lambda x, classes: gb.attribute(x, target=classes.tolist())


# --- the run -------------------------------------------------------------------------------------


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def environment(threads: int | None, devices: list[str]) -> dict[str, Any]:
    versions = {}
    for dist in ("xcam-deploy", "torch", "torchvision", "onnxruntime-gpu", "onnxruntime"):
        with suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    for dist in ("grad-cam", "torchcam", "captum"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else None
    return {
        "machine": platform.machine(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _method_arms(cfg, model, layer, backend_name, loaded) -> dict[str, Callable]:
    """xcam's arms for one backend: ``(x, classes) -> result``."""
    from xcam.methods import get_method

    arms: dict[str, Callable] = {}
    for m in cfg.methods:
        cls = get_method(m)
        if backend_name == "ingraph":
            if m not in INGRAPH_METHODS:
                continue
            method = cls(loaded, layer)
        elif backend_name == "eager":
            method = cls(model, layer) if cls.uses_layers else cls(model)
        else:
            if not cls.uses_layers or cls.name.startswith("guided"):
                continue  # eager-only methods
            method = cls(model, layer, backend=loaded)
        arms[m] = method
    return arms


def _lite_arms(cfg: BenchConfig, loaded: Any, x: torch.Tensor) -> dict[str, tuple]:
    """The torch-free path for a file with gradients: :class:`xcam.lite.OnnxExplainer`."""
    from xcam.lite import METHODS, OnnxExplainer

    explainer = OnnxExplainer(
        loaded.path, providers=["CPUExecutionProvider"], threads=cfg.threads, spin=False
    )  # the same session settings as the floor
    xn = x.numpy()
    return {
        f"lite:{m}": (m, "xcam.lite", lambda m=m: explainer(xn, method=m))
        for m in cfg.methods
        if m in METHODS
    }


def run_bench(cfg: BenchConfig, echo: Callable[[str], None] = print) -> BenchReport:
    """Time every arm of ``cfg``; ``echo`` gets one progress line per group of arms."""
    import exporters
    from xcam.backends import load
    from xcam.core.layers import default_layer
    from xcam.models import load_model

    cfg.check()
    rows: list[Row] = []
    notes: list[str] = []
    with _threads(cfg.threads), tempfile.TemporaryDirectory(prefix="xcam-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for spec in cfg.models:
            info = load_model(spec)
            size = (cfg.input_size, cfg.input_size) if cfg.input_size else info.input_size
            layer = cfg.layer or info.default_layer
            shape, dtype = (info.channels, *size), info.input_dtype  # a grey or fp16 model
            if layer is None:
                layer = default_layer(info.model, torch.zeros(1, *shape, dtype=dtype))
            short = spec.split(":")[-1]
            for device in cfg.devices:
                model = info.model.to(device).eval()
                example = torch.randn(2, *shape, device=device, dtype=dtype)
                sync = torch.cuda.synchronize if device == "cuda" else None
                for backend_name in cfg.backends:
                    sub = tmp / f"{short}_{device}_{backend_name}"
                    sub.mkdir()
                    echo(f"{short} {device} {backend_name}: exporting / loading")
                    floor = _plain_floor(backend_name, model, example, sub, cfg.threads)
                    loaded = None
                    if backend_name != "eager":
                        fmt = {"ingraph": "onnx", "onnxruntime": "onnx"}.get(
                            backend_name, backend_name
                        )
                        path = sub / f"model{FORMATS[fmt].suffix}"
                        exporters.export(
                            model,
                            [layer],
                            example,
                            path,
                            format=fmt,
                            gradients=backend_name == "ingraph",
                            aoti=False,
                        )
                        options = {"threads": cfg.threads} if fmt == "onnx" else {}
                        # bench's own export of the model: trusted
                        loaded = load(path, device=device, trust_code=True, **options)
                    methods = _method_arms(cfg, model, layer, backend_name, loaded)
                    skipped = [m for m in cfg.methods if m not in methods]
                    if skipped:
                        notes.append(
                            f"{short} {backend_name}: {', '.join(skipped)} not run "
                            + (
                                "(not in an exported-with-gradients file)"
                                if backend_name == "ingraph"
                                else "(eager PyTorch only)"
                            )
                        )
                    for batch in cfg.batches:
                        gen = torch.Generator().manual_seed(0)
                        x = torch.randn(batch, *shape, generator=gen).to(device, dtype)
                        with torch.no_grad():
                            classes = model(x).argmax(1)
                        arms: dict[str, tuple[str, str, Callable[[], object]]] = {
                            "inference": (
                                "inference",
                                "onnxruntime"
                                if backend_name in ("onnxruntime", "ingraph")
                                else "torch",
                                lambda f=floor, x=x: f(x),
                            )
                        }
                        if backend_name == "onnxruntime" and loaded is not None:
                            arms["activations"] = (
                                "activations",
                                "xcam",
                                lambda b=loaded, x=x: b.run(x),
                            )
                        for m, method in methods.items():
                            arms[f"xcam:{m}"] = (
                                m,
                                "xcam",
                                lambda f=method, x=x, c=classes: f(x, c),
                            )
                        if backend_name == "ingraph" and device == "cpu":
                            arms.update(_lite_arms(cfg, loaded, x))
                        if cfg.peers and backend_name == "eager":
                            for lib in PEERS:
                                for m in cfg.methods:
                                    fn = peer_arm(lib, m, model, layer)
                                    if isinstance(fn, str):
                                        if fn not in notes:
                                            notes.append(fn)
                                    elif fn is not None:
                                        arms[f"{lib}:{m}"] = (
                                            m,
                                            lib,
                                            lambda f=fn, x=x, c=classes: f(x, c),
                                        )
                        echo(
                            f"{short} {device} {backend_name} batch {batch}: "
                            f"{len(arms)} arms x {cfg.repeats} rounds"
                        )
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            times = measure(
                                {k: fn for k, (_, _, fn) in arms.items()}, cfg.repeats, sync
                            )
                        base = spread(times["inference"])[0]
                        for key, (method_name, lib, _) in arms.items():
                            med, p10, p90 = spread(times[key])
                            rows.append(
                                Row(
                                    model=short,
                                    layer=layer,
                                    method=method_name,
                                    library=lib,
                                    backend=backend_name,
                                    device=device,
                                    batch=batch,
                                    input_size=size[0],
                                    median_ms=round(med, 3),
                                    p10_ms=round(p10, 3),
                                    p90_ms=round(p90, 3),
                                    ratio_to_inference=round(med / base, 3),
                                    images_per_s=round(batch * 1e3 / med, 2),
                                )
                            )
    report = BenchReport(rows, environment(cfg.threads, cfg.devices), notes, [])
    report.goals = goals(report)
    return report


# --- goals, tables, plot -------------------------------------------------------------------------


def _find(rows: list[Row], **want: Any) -> list[Row]:
    return [r for r in rows if all(getattr(r, k) == v for k, v in want.items())]


def goals(report: BenchReport) -> list[dict[str, Any]]:
    """The issue's goals, each met / missed / not measured, with the figures behind it."""
    out = []

    def add(goal: str, ratio: float | None, limit: float, detail: str, higher: bool = False):
        if ratio is None:
            out.append({"goal": goal, "status": "not measured", "value": None, "detail": detail})
            return
        ok = ratio >= limit if higher else ratio <= limit
        out.append(
            {"goal": goal, "status": "met" if ok else "missed", "value": ratio, "detail": detail}
        )

    rows = report.rows
    for r in _find(rows, method="gradcam", library="xcam", backend="eager"):
        peer = _find(
            rows,
            method="gradcam",
            library="pytorch-grad-cam",
            model=r.model,
            device=r.device,
            batch=r.batch,
        )
        extra = f"; pytorch-grad-cam: {peer[0].ratio_to_inference}x" if peer else ""
        add(
            "eager Grad-CAM <= 1.15x plain eager inference",
            r.ratio_to_inference,
            1.15,
            f"{r.model} {r.layer} {r.device} batch {r.batch}: {r.ratio_to_inference}x{extra}",
        )
    for r in _find(rows, method="activations", backend="onnxruntime"):
        add(
            "ONNX Runtime forward with activations <= 1.03x plain ONNX Runtime",
            r.ratio_to_inference,
            1.03,
            f"{r.model} {r.layer} {r.device} batch {r.batch}: {r.ratio_to_inference}x",
        )
    for r in _find(rows, method="gradcam", backend="ingraph"):
        add(
            "in-graph Grad-CAM <= 1.10x plain ONNX Runtime",
            r.ratio_to_inference,
            1.10,
            f"{r.library}, {r.model} {r.layer} {r.device} batch {r.batch}: {r.ratio_to_inference}x",
        )
    for peer in _find(rows, method="scorecam", library="pytorch-grad-cam"):
        ours = _find(rows, method="scorecam", library="xcam", model=peer.model, batch=peer.batch)
        if ours:
            best = min(ours, key=lambda r: r.median_ms)
            add(
                "Score-CAM >= 5x faster than pytorch-grad-cam's",
                round(peer.median_ms / best.median_ms, 2),
                5.0,
                f"{peer.model} batch {peer.batch}: peer {peer.median_ms:.0f} ms, xcam "
                f"{best.backend} {best.median_ms:.0f} ms",
                higher=True,
            )
    return out


HEADER = [
    "model",
    "device",
    "backend",
    "batch",
    "method",
    "library",
    "median ms",
    "p10-p90 ms",
    "x inference",
    "img/s",
]


def _cells(r: Row) -> list[str]:
    return [
        r.model,
        r.device,
        r.backend,
        str(r.batch),
        r.method,
        r.library,
        f"{r.median_ms:.1f}",
        f"{r.p10_ms:.1f}-{r.p90_ms:.1f}",
        f"{r.ratio_to_inference:.2f}x",
        f"{r.images_per_s:.1f}",
    ]


def to_markdown(report: BenchReport, command: str = "xcam bench") -> str:
    env = report.env
    v = env["versions"]
    lines = [
        f"# xcam bench ({env['cpu']}, {env['threads']} threads"
        + (f", {env['gpu']}" if env.get("gpu") else "")
        + ")",
        "",
        f"{env['date']}; torch {v.get('torch')}, onnxruntime "
        f"{v.get('onnxruntime-gpu') or v.get('onnxruntime')}, pytorch-grad-cam "
        f"{v.get('grad-cam')}, torchcam {v.get('torchcam')}, captum {v.get('captum')}. "
        f"Reproduce: `{command}`. Medians over interleaved rounds; `x inference` is the "
        "ratio to plain inference on the same backend and device.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "| " + " | ".join("---" for _ in HEADER) + " |",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in report.rows]
    if report.goals:
        lines += ["", "## Goals", ""]
        lines += [f"- **{g['status']}**: {g['goal']} — {g['detail']}" for g in report.goals]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def to_terminal(report: BenchReport) -> str:
    table = [HEADER] + [_cells(r) for r in report.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    for g in report.goals:
        lines.append(f"goal {g['status']}: {g['goal']} ({g['detail']})")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def plot(report: BenchReport, path: str | Path) -> Path:
    """Bars of the ratio to plain inference, per method and backend/library; one panel per
    device (and batch size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.method != "inference"]
    panels = sorted({(r.device, r.batch) for r in rows})
    if not panels:
        raise XCamError("nothing to plot: no explanation was measured")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (device, batch) in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if r.device == device and r.batch == batch]
        methods = list(dict.fromkeys(r.method for r in sel))
        series = list(dict.fromkeys(f"{r.library} ({r.backend})" for r in sel))
        width = 0.8 / max(len(series), 1)
        for i, s in enumerate(series):
            values = []
            for m in methods:
                hit = [r for r in sel if r.method == m and f"{r.library} ({r.backend})" == s]
                values.append(hit[0].ratio_to_inference if hit else 0.0)
            xs = [j + i * width for j in range(len(methods))]
            ax.bar(xs, values, width, label=s)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))], methods)
        ax.set_yscale("log")
        ax.set_ylabel("time / plain inference (same backend)")
        ax.set_title(f"{device}, batch {batch}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    from xcam.files import atomic

    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
