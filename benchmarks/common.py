"""What every benchmark script shares: ORT sessions, the plain export, the interleaved
timing loop, the environment record and the results files."""

from __future__ import annotations

import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

RESULTS = Path(__file__).parent / "results"


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session as xcam's backend makes it: pinned threads, no spinning workers (they
    would steal the cores from torch between calls)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_plain(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The baseline: the model alone, logits only, same exporter and dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        )
    return path


def measure(arms: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median milliseconds per arm after one warm-up call each. Arms are interleaved round
    by round in a rotating order: whichever arm follows a torch arm pays for torch's OpenMP
    threads still spinning, so no arm may always sit in that place."""
    for fn in arms.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    keys = list(arms)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            arms[key]()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def environment(threads: int) -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(
    out: Path,
    env: dict,
    rows: list[dict],
    title: str,
    intro: str,
    header: list[str],
    cells: Callable[[dict], list[object]],
) -> str:
    """``out``.json (environment + rows) and ``out``.md (a table); returns the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# {title}",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in cells(r)) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


def main(
    doc: str,
    models: list[str],
    name: str,
    bench: Callable[..., list[dict]],
    title: str,
    header: list[str],
    cells: Callable[[dict], list[object]],
) -> None:
    """The command line both scripts share: ``--models NAME:LAYER …``, batches, rounds, size,
    threads, out; runs ``bench`` per model and writes ``results/<name>.{json,md}``."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=models, help="torchvision NAME:LAYER")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=RESULTS / name)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.models:
            model, _, layer = spec.partition(":")
            rows += bench(
                model, layer or "layer4", a.batches, a.rounds, a.size, a.threads, Path(tmp)
            )
    env = environment(a.threads)
    intro = (
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {a.size}x{a.size} input, "
        f"median of {a.rounds} interleaved rounds, {env['date']}. Reproduce: "
        f"`python benchmarks/{name}.py`."
    )
    print(
        write_results(a.out, env, rows, f"{title} (CPU, {a.threads} threads)", intro, header, cells)
    )
