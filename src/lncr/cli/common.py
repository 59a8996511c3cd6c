"""What the command modules share: the consoles, the error boundary, summary tables, the study
summary and the phantom's rendering progress."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from lncr.display import fmt
from lncr.errors import LncrError

#: The width of output that goes to a file or a pipe (a batch job's log): wide enough that no
#: table is wrapped ("validati / on"); a table takes only the width its cells need.
LOG_WIDTH = 4000


class LogConsole(Console):
    """A rich console that is the terminal's width on a terminal and :data:`LOG_WIDTH` wide
    otherwise (rich falls back to 80 columns, or the terminal of another standard stream,
    when its own output is redirected)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(LOG_WIDTH, size.height)

    def rule(self, title: str = "", **kwargs) -> None:
        """A horizontal rule: the terminal's width, or 80 columns in a log."""
        if self.is_terminal:
            return super().rule(title, **kwargs)
        from rich.rule import Rule

        self.print(Rule(title, **kwargs), width=80)


console = LogConsole(highlight=False, soft_wrap=True)
err_console = LogConsole(stderr=True, highlight=False, soft_wrap=True)

if TYPE_CHECKING:
    from lncr.study.validate import Study


#: OS errors that mean the user named something wrong (exit 2); other OS errors (a full disk, a
#: read-only folder) mean the work failed (exit 1).
_BAD_PATH = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def describe_error(exc: BaseException, argv: list[str] | None = None) -> tuple[int, str]:
    """The exit code and the one-line explanation of an error reaching the command line
    (``argv``: the command's arguments, for the ``--debug`` hint), with control characters
    escaped and its length bounded (an echoed value never floods the terminal)."""
    from lncr.identifiers import shown

    code, message = _describe(exc, argv)
    return code, shown(message, 2000)


def _describe(exc: BaseException, argv: list[str] | None) -> tuple[int, str]:
    if isinstance(exc, LncrError):
        return exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted; run the same command again to resume"
    if isinstance(exc, _BAD_PATH):
        return 2, f"{exc.strerror or exc}: {exc.filename} (check the path)"
    if isinstance(exc, PermissionError):
        return 2, f"permission denied: {exc.filename} (check who may read or write it)"
    if isinstance(exc, OSError) and exc.errno == 40:  # ELOOP
        return 2, f"symbolic link loop at {exc.filename}"
    if isinstance(exc, UnicodeDecodeError):
        return 2, f"a text file is not UTF-8 ({exc.reason} at byte {exc.start}): save it as UTF-8"
    if isinstance(exc, OSError):
        return 1, (f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) + (
            " (free some space and run again)" if exc.errno == 28 else "")
    if isinstance(exc, ValueError):
        return 2, str(exc)
    return 1, (f"internal error ({type(exc).__name__}: {exc}); run `{debug_command(argv)}` for the "
               "traceback and report it")


def debug_command(argv: list[str] | None = None) -> str:
    """The command line that just ran, with ``--debug`` where lncr takes it (before the
    subcommand: ``lncr --debug evaluate study.yaml``)."""
    import shlex
    import sys

    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]
    return shlex.join(["lncr", "--debug", *args])


class ErrorBoundary(TyperGroup):
    """The one place where errors become messages: every lncr error (and the usual OS and
    value errors) is printed as one red line with exit code 2 (bad input) or 1 (failed work);
    ``lncr --debug …`` lets the traceback through instead."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["lncr.argv"] = list(args)  # the command line, for the --debug hint
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits and usage errors: typer's
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            code, message = describe_error(exc, ctx.meta.get("lncr.argv"))
            err_console.print(f"[red]ERROR {escape(message)}[/red]")
            raise typer.Exit(code) from exc


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
                             ["cohort", "label 1", "label 0", "no label (to score)"],
                             [(c, n["1"], n["0"], n["unlabelled"])
                              for c, n in summary["patients"].items()]))
    if "slides" in summary:
        cohorts = [c for c in ("development", "external", "prospective")
                   if any(n[c] for n in summary["slides"].values()) or c != "prospective"]
        console.print(table("Slides per stain", ["stain", *cohorts],
                             [(s, *(n[c] for c in cohorts))
                              for s, n in summary["slides"].items()]))
        missing = summary.get("missing_stains", {})
        if missing:
            console.print(f"{len(missing)} patient(s) lack a stain: " + "; ".join(
                f"{pid} ({', '.join(st)})" for pid, st in list(missing.items())[:20])
                + (" …" if len(missing) > 20 else ""))
        else:
            console.print("Every patient has every stain.")
        if summary.get("readers"):
            console.print("Readers: " + ", ".join(f"{name} {n} slide(s)" for name, n in
                                                  summary["readers"].items()))
        if summary.get("annotated_slides"):
            console.print(f"{summary['annotated_slides']} slide(s) have QuPath annotations: "
                          "only their regions are tiled.")
    if "split" in summary:
        sp = summary["split"]
        console.print(f"Split ({sp['source']}): train {sp['train']['1']} CR / {sp['train']['0']} "
                      f"non-CR, val {sp['val']['1']} CR / {sp['val']['0']} non-CR")
    for p in study.problems.items:
        style = "red" if p.severity == "error" else "yellow"
        console.print(f"[{style}]{p}[/{style}]")


def run_synth(out: Path, settings, workers: int, force: bool):
    from lncr.synth.cohort import synthesize

    total = settings.patients + settings.external
    with Meter("patients") as meter:
        return synthesize(out, settings, workers=workers, force=force,
                          progress=counted(meter, "rendered", total))


def warn_unusable(excluded: list[dict], where: str) -> None:
    """One yellow line per patient a stage could not use at ``where``, with the reason."""
    for u in excluded:
        err_console.print(f"[yellow]WARNING {where}: patient {escape(u['patient_id'])} "
                          f"({u['cohort']}) is left out: {escape(u['reason'])}[/yellow]")


class Meter:
    """Progress of a long command in counts, rate and ETA: a redrawn bar on a terminal, plain
    timestamped lines (at most one per ``every`` seconds, and the last unless ``last_line``
    is False) in a log file or a batch job. ``update(what, done, total)`` moves it; use it as
    a context manager."""

    def __init__(self, unit: str, every: float = 10.0, last_line: bool = True):
        self.unit, self.every, self.last_line = unit, every, last_line
        self.bar = None
        self.t0 = self.last = 0.0

    def __enter__(self) -> "Meter":
        import time

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.t0 = time.perf_counter()
        if console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                TimeRemainingColumn(), console=console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=None, rate="")
        return self

    def update(self, what: str, done: int, total: int, unit: str | None = None) -> None:
        """``done`` of ``total``; another ``unit`` starts a new phase (the rate and ETA
        count from there), e.g. the QC thumbnails after the tiles."""
        import time

        now = time.perf_counter()
        if unit is not None and unit != self.unit:
            self.unit, self.t0, self.last = unit, now, 0.0
        elapsed = now - self.t0  # no rate yet at the very start of a phase
        rate = done / elapsed if elapsed > 1e-2 else math.nan
        shown = "-" if math.isnan(rate) else f"{rate:.1f}"
        if self.bar is not None:
            self.bar.update(self.task, description=escape(what), completed=done, total=total,
                            rate=f"{shown} {self.unit}/s")
        elif now - self.last >= self.every or (done >= total and self.last_line):
            self.last = now
            eta = (total - done) / rate if rate > 0 else math.nan
            stamp = time.strftime("%H:%M:%S")
            console.print(f"{stamp} {escape(what)}: {done}/{total} {self.unit} "
                          f"({shown}/s, ETA {_duration(eta)})")

    def phase(self, unit: str) -> Callable[[str, int, int], None]:
        """A ``(what, done, total)`` callback that counts in ``unit``: a new phase."""
        return lambda what, done, total: self.update(what, done, total, unit=unit)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def counted(meter: Meter, verb: str, total: int) -> Callable[[str], None]:
    """A callback of one argument (what was just done) that moves ``meter`` towards
    ``total``."""
    done = [0]

    def step(what: str) -> None:
        done[0] += 1
        meter.update(f"{verb} {what}", done[0], total)
    return step


def unit_line(row: dict) -> None:
    """One timestamped line per finished sweep unit: ``[k/N]``, its status and score, the
    time it took and the ETA of the rest (a red line with the first line of the error for a
    failed unit)."""
    what = (f"{row['stain']} {row['magnification']} {row['architecture']} "
            f"bag {row['bag_size']} repeat {row['repeat']}")
    count = f"[{row['done']}/{row['total']}] " if "done" in row else ""
    eta = f", ETA {_duration(row['eta_s'])}" if "eta_s" in row else ""
    stamp = time.strftime("%H:%M:%S")
    if row["status"] == "failed":
        err_console.print(f"{stamp} {count}[red]failed[/red] {escape(what)}: "
                          f"{escape(str(row['error']).splitlines()[0])}{eta}")
    else:
        console.print(f"{stamp} {count}{row['status']} {escape(what)}: epochs "
                      f"{row['epochs_trained']}, validation AUC "
                      f"{fmt(row['val_auc'], 2, row.get('val_auc_note', ''))} "
                      f"({row['seconds']:.0f} s){eta}")


def slide_lines(verb: str):
    """A progress callback printing one timestamped line per finished slide, with a count and
    the rate so far (explain commands: their models load lazily, so no total is known)."""
    started, count = time.perf_counter(), [0]

    def line(what: str) -> None:
        count[0] += 1
        rate = count[0] / max(time.perf_counter() - started, 1e-9)
        console.print(f"{time.strftime('%H:%M:%S')} {verb} {escape(what)} ({count[0]} slide × "
                      f"magnification units, {rate:.2f}/s)")
    return line


def step_line(what: str) -> None:
    """One timestamped line as a step of a command begins."""
    console.print(f"{time.strftime('%H:%M:%S')} {escape(what)} …")


def section_line(name: str) -> None:
    """One timestamped line per report section as it is written."""
    console.print(f"{time.strftime('%H:%M:%S')} report: section '{escape(name)}' written")


def epoch_line(row: dict) -> None:
    """One line per training epoch: loss, AUCs, learning rate, its time and the ETA."""
    done = int(row["epoch"]) + 1
    eta = (row["epochs"] - done) * row["seconds"]
    console.print(f"{time.strftime('%H:%M:%S')} epoch {done}/{row['epochs']}: train loss "
                  f"{fmt(row['train_loss'])}, train AUC {fmt(row['train_auc'])}, validation "
                  f"loss {fmt(row['val_loss'])}, validation AUC {fmt(row['val_auc'])}, lr "
                  f"{row['lr']:.2e} ({row['seconds']:.1f} s, ETA {_duration(eta)})")


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"
