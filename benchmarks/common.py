"""What every benchmark script shares: ORT sessions, the plain export, the interleaved
timing loop, the environment record and the results files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from xcam.bench import export_plain, ort_session
from xcam.bench import measure as bench_measure

__all__ = ["RESULTS", "environment", "export_plain", "main", "measure", "ort_session"]

RESULTS = Path(__file__).parent / "results"


def measure(arms: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median milliseconds per arm (xcam.bench.measure: warm-up, then rotating rounds)."""
    return {k: statistics.median(v) for k, v in bench_measure(arms, rounds).items()}


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
