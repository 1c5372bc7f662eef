"""``xcam demo``: the whole job on the bundled demo model and its sample images."""

from __future__ import annotations

from pathlib import Path

import click

from xcam.cli.messages import fail, os_reason


@click.command()
@click.option(
    "--out", "-o", type=click.Path(file_okay=False), default="demo-out", show_default=True
)
def demo(out: str) -> None:
    """Run the whole job on the bundled demo model and its sample images."""
    from xcam.core.errors import XCamError
    from xcam.demo.run import run_demo

    try:
        paths = run_demo(Path(out), echo=click.echo)
    except XCamError as e:
        fail(f"{e}".replace("pass --overwrite (overwrite=True) to replace them, or ", ""))
    except OSError as e:
        fail(f"can't write to {out}: {os_reason(e)}")
    click.echo("wrote:")
    for p in paths:
        click.echo(f"  {p}")
