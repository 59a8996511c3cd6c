"""What the command modules share: the consoles, summary tables, the study summary and the
phantom's rendering progress."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

if TYPE_CHECKING:
    from lncr.study.validate import Study


def table(title: str, columns: list[str], rows) -> Table:
    """A rich table; every column after the first is right-aligned (counts)."""
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        t.add_row(*(str(v) for v in row))
    return t


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def print_study(study: "Study") -> None:
    summary = study.summary()
    if "patients" in summary:
        console.print(table("Patients (label 1 = complete response at 12 months)",
                             ["cohort", "label 1", "label 0"],
                             [(c, n["1"], n["0"]) for c, n in summary["patients"].items()]))
    if "slides" in summary:
        console.print(table("Slides per stain", ["stain", "development", "external"],
                             [(s, n["development"], n["external"])
                              for s, n in summary["slides"].items()]))
        missing = summary.get("missing_stains", {})
        if missing:
            console.print(f"{len(missing)} patient(s) lack a stain: " + "; ".join(
                f"{pid} ({', '.join(st)})" for pid, st in list(missing.items())[:20])
                + (" …" if len(missing) > 20 else ""))
        else:
            console.print("Every patient has every stain.")
    if "split" in summary:
        sp = summary["split"]
        console.print(f"Split ({sp['source']}): train {sp['train']['1']} CR / {sp['train']['0']} "
                      f"non-CR, val {sp['val']['1']} CR / {sp['val']['0']} non-CR")
    for p in study.problems.items:
        style = "red" if p.severity == "error" else "yellow"
        console.print(f"[{style}]{p}[/{style}]")


def run_synth(out: Path, settings, workers: int, force: bool):
    from rich.progress import Progress

    from lncr.synth.cohort import synthesize

    total = settings.patients + settings.external
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"Rendering {total} patients × {len(settings.stains)} stains", total=total)
        return synthesize(out, settings, workers=workers, force=force,
                          progress=lambda _: bar.advance(task))
