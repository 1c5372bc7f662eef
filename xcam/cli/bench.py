"""``xcam bench``: what an explanation costs next to plain inference, per backend and device."""

from __future__ import annotations

import sys

import click

from xcam.cli.messages import echo_err, fail
from xcam.core.artifact import MAX_SIDE


@click.command()
@click.option("--quick", is_flag=True, help="Smoke preset: about a minute on 2 CPU cores.")
@click.option("--models", help="Comma-separated MODEL specs (full preset: torchvision:resnet50).")
@click.option("--methods", help="Comma-separated method names (full: gradcam,gradcam++,layercam).")
@click.option(
    "--backends",
    help="Comma-separated: eager,torchscript,onnxruntime,pt2,ingraph (full: all but pt2).",
)
@click.option("--devices", help="Comma-separated: cpu,cuda (default: cpu).")
@click.option("--batch", "batches", help="Comma-separated batch sizes (full: 1,32).")
@click.option(
    "--input-size", type=click.IntRange(8, MAX_SIDE), help="Square input size (full: 224)."
)
@click.option("--repeats", type=click.IntRange(1), help="Timed rounds per arm (default 5).")
@click.option("--layer", help="Target layer (default: the model's last spatial layer).")
@click.option("--threads", type=click.IntRange(1), help="torch and ONNX Runtime threads.")
@click.option(
    "--peers/--no-peers", default=None, help="Also time pytorch-grad-cam, torchcam, captum."
)
@click.option(
    "--memory/--no-memory",
    default=True,
    help="Also read each arm's peak memory for one call, after the timings (default: on).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the rows as JSON.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Write a Markdown table.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG plot of the ratios.")
def bench(
    quick,
    models,
    methods,
    backends,
    devices,
    batches,
    input_size,
    repeats,
    layer,
    threads,
    peers,
    memory,
    json_out,
    markdown,
    plot,
) -> None:
    """What an explanation costs: methods x backends x devices x batch sizes, next to plain
    inference on the same backend (and, with --peers, the peer libraries).

    \b
    Every arm is timed after a warm-up, interleaved in a rotating order with the others;
    rows give the median, p10-p90, the ratio to plain inference and images/s, and then
    the memory one call needs above what is already held (--no-memory: not read). Without
    --quick the full preset runs (resnet50, 224, batch 1 and 32: several minutes on CPU);
    any option overrides the preset.
    """
    from xcam.bench import PRESETS, BenchConfig, run_bench, to_terminal
    from xcam.core.errors import XCamError

    preset = dict(PRESETS["quick" if quick else "full"])
    given = {
        "models": _csv(models),
        "methods": _csv(methods),
        "backends": _csv(backends),
        "devices": _csv(devices),
        "batches": _csv(batches, int),
        "input_size": input_size,
        "repeats": repeats,
        "peers": peers,
    }
    preset.update({k: v for k, v in given.items() if v is not None})
    cfg = BenchConfig(**preset, layer=layer, threads=threads, memory=memory)
    try:
        report = run_bench(cfg, echo=echo_err)
    except XCamError as e:
        fail(str(e))
    click.echo(to_terminal(report))
    _write_reports(report, json_out, markdown, plot)


def _csv(value: str | None, cast=str) -> list | None:
    """A comma-separated option as a list (blank items dropped), each item ``cast``."""
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list") from None


def _write_reports(report, json_out: str | None, markdown: str | None, plot: str | None) -> None:
    """--json, --markdown (headed by the command that ran) and --plot, those given."""
    import shlex

    from xcam.bench import plot as make_plot
    from xcam.bench import to_markdown
    from xcam.files import atomic

    command = "xcam bench " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "xcam bench"
    writers = ((json_out, report.to_json), (markdown, lambda: to_markdown(report, command)))
    for path, text in writers:
        if path:
            with atomic(path) as tmp:  # never through a planted link, never half a file
                tmp.write_text(text())
            click.echo(f"wrote {path}")
    if plot:
        click.echo(f"wrote {make_plot(report, plot)}")
