"""``lncr report``: a thin command over :mod:`lncr.report.build`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lncr.cli.common import console, err_console, section_line
from lncr.study.validate import Study


def report(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the HTML file (default: <output_dir>/report/report.html).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting.")] = None,
) -> None:
    """Write one self-contained HTML report of the study: cohorts, tiling QC, the sweep and
    its selection, final models, results with confidence intervals, explanations and a methods
    appendix written from the settings that ran. Sections whose stage has not run say so."""
    from lncr.report.build import build_report

    path = build_report(Study.load(study_yaml, set_), out, progress=section_line,
                        warn=lambda m: err_console.print(f"[yellow]WARNING {escape(m)}[/yellow]"))
    console.print(f"Report: {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
