"""How the command line reports: one ``Error:`` line per user error, ``OSError``s in words."""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import click


def fail(message: str) -> NoReturn:
    """A user error: one line, no traceback (``xcam --debug`` prints the one behind it)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("xcam.debug") and sys.exc_info()[0] is not None:
        traceback.print_exc()
    raise click.ClickException(message)


def os_reason(error: OSError) -> str:
    """What an ``OSError`` says, never empty: ``OSError(errno.ENOSPC)`` (a bare number,
    as some writers raise it) is "No space left on device"; one with no detail says so."""
    import os

    code = error.errno
    if code is None and len(error.args) == 1 and isinstance(error.args[0], int):
        code = error.args[0]
    reason = error.strerror or (os.strerror(code) if isinstance(code, int) else "")
    if not reason and not (len(error.args) == 1 and isinstance(error.args[0], int)):
        reason = str(error)
    if not reason:
        reason = (
            f"{type(error).__name__} with no detail (a full disk, or a folder that went away "
            "or became read-only?)"
        )
    return reason + (f" ({error.filename})" if error.filename else "")


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(text).split())


def channels(n: int) -> str:
    """``"1 channel"``, ``"3 channels"``."""
    return f"{n} channel" + ("" if n == 1 else "s")


def echo_err(line: str) -> None:
    """A progress or note line, on stderr (stdout carries the results)."""
    click.echo(line, err=True)
