"""The ``lncr`` command line: a thin layer over the Python API, one module per stage group.

Each command parses its options, loads the study once (:meth:`lncr.study.validate.Study.load`)
and calls the stage's Python API. Errors are not caught by the commands: the one error
boundary (:class:`lncr.cli.common.ErrorBoundary`) turns an :class:`lncr.errors.LncrError` into
one red line and an exit code.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lncr import __version__
from lncr.cli.bundle import apply, export
from lncr.cli.common import ErrorBoundary
from lncr.cli.demo import demo
from lncr.cli.evaluation import evaluate
from lncr.cli.explain import explain_app
from lncr.cli.features import embed
from lncr.cli.report import report
from lncr.cli.study import synth, validate
from lncr.cli.sweep import sweep
from lncr.cli.tiling import tile, tiles_app
from lncr.cli.training import predict, train

app = typer.Typer(
    cls=ErrorBoundary,
    name="lncr",
    help="Predict complete response in lupus nephritis from multi-stain renal biopsy slides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lncr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error "
                                        "instead of its one-line explanation.")] = False,
) -> None:
    """lncr: the published multi-stain, multi-magnification attention-MIL method, as software.

    Exit codes: 0 done, 2 bad input (the message names the file, row or setting and the fix),
    1 the work failed."""
    ctx.ensure_object(dict)["debug"] = debug


app.command()(validate)
app.command()(synth)
app.command()(tile)
app.add_typer(tiles_app, name="tiles")
app.command()(embed)
app.command()(train)
app.command()(predict)
app.command()(sweep)
app.command()(evaluate)
app.add_typer(explain_app, name="explain")
app.command()(report)
app.command()(export)
app.command()(apply)
app.command()(demo)


if __name__ == "__main__":  # pragma: no cover
    app()
