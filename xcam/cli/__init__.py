"""The ``xcam`` command line (click). Every command has ``--help``.

The group lives here; each command lives in a module of its own (layers, explain, demo,
export, filters, bench, serve), and what they share in messages, options, loading and probe.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import click

from xcam import __version__
from xcam.cli import bench, demo, explain, export, filters, layers, serve
from xcam.cli.messages import fail, one_line, os_reason


class _Group(click.Group):
    """The ``xcam`` group: an error no command foresaw still ends in one ``Error:`` line
    (``xcam --debug …`` prints its traceback), never in a traceback alone."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            from xcam.core.errors import XCamError, first_line

            if isinstance(e, XCamError):
                fail(one_line(str(e)))
            if isinstance(e, OSError):
                fail(os_reason(e))
            if isinstance(e, MemoryError):
                fail("out of memory: try a smaller --input-size or --batch-size")
            fail(
                f"unexpected {type(e).__name__}: {first_line(e)} (a bug in xcam or in the "
                "model's code; `xcam --debug …` prints the traceback)"
            )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xcam")
@click.option("--debug", is_flag=True, help="Print the traceback behind an error message.")
def main(debug: bool) -> None:
    """Explain PyTorch CNN decisions: Grad-CAM and family, from eager or exported models."""
    ctx = click.get_current_context()
    ctx.meta["xcam.debug"] = debug
    ctx.with_resource(_terminate_cleanly())
    ctx.with_resource(_warnings_on_one_line(debug))


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM ends a command as Ctrl-C does: ``finally`` blocks run, so temporary files
    go, the output folder's lock is released and the job's record is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_on_one_line(debug: bool):
    """While a command runs, a Python warning prints as one ``Warning: …`` line on stderr,
    not as ``file.py:64: UserWarning: …`` and the source line (``--debug`` keeps Python's
    form). Only the command line's display changes: filters, and the library's warnings
    outside a command, are as they were."""
    import warnings

    if debug:
        yield
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        click.echo(f"Warning: {one_line(message)}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


COMMANDS = (
    layers.layers,
    explain.explain,
    demo.demo,
    export.export,
    filters.filters,
    bench.bench,
    serve.serve,
)
for _command in COMMANDS:
    main.add_command(_command)
