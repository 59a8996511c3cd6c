"""``lncr validate`` and ``lncr synth``: thin commands over :mod:`lncr.study` and
:mod:`lncr.synth`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli.common import console, default_workers, err_console, print_study, run_synth


def validate(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting, e.g. --set split.seed=3 (repeatable).")] = None,
    files: Annotated[bool, typer.Option(help="Open every slide file (--no-files skips it).")] = True,
    record: Annotated[bool, typer.Option(
        help="Write the split and effective settings to <output_dir>/study/.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Threads that open slides.")] = 4,
) -> None:
    """Check a study (settings, tables, slide files) and print a summary and every problem."""
    from lncr.study.validate import load_study, save_study_record

    study = load_study(study_yaml, set_, check_files=files, workers=workers)
    print_study(study)
    n_err, n_warn = len(study.problems.errors), len(study.problems.warnings)
    if n_err:
        err_console.print(f"[red]{n_err} error(s), {n_warn} warning(s): the study is not usable "
                          "until the errors are fixed.[/red]")
        raise typer.Exit(2)
    if record:
        folder = save_study_record(study)  # SplitMismatchError: the boundary explains it
        console.print(f"Split and effective settings written to {folder}")
    console.print(f"[green]OK[/green]: {n_warn} warning(s), no errors.")


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the phantom study into.")],
    patients: Annotated[int, typer.Option(min=2, help="Development patients.")] = 8,
    external: Annotated[int, typer.Option(min=0, help="External-cohort patients.")] = 4,
    seed: Annotated[int, typer.Option(min=0, help="Random seed: same seed, byte-identical files.")] = 0,
    size: Annotated[str, typer.Option(
        help="small (tests), demo, or WIDTHxHEIGHT in level-0 pixels.")] = "small",
    signal: Annotated[float, typer.Option(
        help="Strength of the lesion-outcome link (0 = none, 1 = default).")] = 1.0,
    permute_labels: Annotated[bool, typer.Option(
        "--permute-labels", help="Shuffle labels after rendering (a null cohort).")] = False,
    stains: Annotated[str, typer.Option(help="Comma-separated stains to render.")] = "HE,PAS,PASM,MASSON",
    anatomy: Annotated[str, typer.Option(
        help="band: one core filling a --size canvas; biopsy: needle cores of true size on glass.")] = "band",
    cores: Annotated[str, typer.Option(help="biopsy: cores per slide, N or MIN-MAX.")] = "1-3",
    core_length: Annotated[str, typer.Option(help="biopsy: core length in mm, MIN-MAX.")] = "5-15",
    core_width: Annotated[str, typer.Option(help="biopsy: core width in mm, MIN-MAX.")] = "0.8-1.2",
    missing_stains: Annotated[float, typer.Option(
        help="Chance that a patient lacks a stain (one stain is always kept).")] = 0.0,
    workers: Annotated[int, typer.Option(min=0, help="Processes rendering patients in parallel.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite a folder holding other content.")] = False,
) -> None:
    """Write a synthetic multi-stain phantom cohort whose ground truth is known."""
    from lncr.synth.cohort import SynthSettings, parse_range

    settings = SynthSettings(patients=patients, external=external, seed=seed, size=size,
                             signal=signal, permute_labels=permute_labels,
                             stains=tuple(s.strip() for s in stains.split(",") if s.strip()),
                             anatomy=anatomy,
                             cores=tuple(int(v) for v in parse_range(cores, "--cores")),
                             core_length_mm=parse_range(core_length, "--core-length"),
                             core_width_mm=parse_range(core_width, "--core-width"),
                             missing_stains=missing_stains)
    result = run_synth(out, settings, workers or default_workers(), force)
    console.print(f"Phantom study written to {result.study} ({result.rendered} slides rendered, "
                  f"{result.reused} reused)")
