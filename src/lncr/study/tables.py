"""Read ``patients.csv`` and ``slides.csv`` and check every row, collecting all problems.

Both tables are read as text so that a bad value is reported as written, with its line number
(the header is line 1, the first data row line 2). Column names are matched without regard to
case or surrounding spaces (two columns that then read alike are an error), and every name and
value is read in Unicode's composed form (NFC).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lncr.identifiers import (
    ALLOWED,
    FORMULA_START,
    identifier_problem,
    joined_name_problem,
    nfc,
    shown,
)
from lncr.slides.reader import PLAUSIBLE_MPP
from lncr.study.report import Problems

PATIENT_COLUMNS = ("patient_id", "cohort", "label")
PATIENT_OPTIONAL = ("split", "site")  # site: where an external patient comes from
SLIDE_COLUMNS = ("patient_id", "stain", "path")
SLIDE_OPTIONAL = ("mpp", "annotations")  # annotations: a QuPath GeoJSON export
#: ``prospective``: patients to be scored, whose outcome is not known yet (an empty label).
COHORTS = ("development", "external", "prospective")
UNLABELLED = ("prospective",)
#: Cohorts outside the development split: their patients take the cohort as their side.
OUTSIDE_SPLIT = ("external", "prospective")
SPLITS = ("train", "val")


@dataclass
class Tables:
    """The two tables after row checks. Rows with errors are kept (``ok`` is False) so that
    every problem can be reported; later stages only run on a study without errors."""

    patients: pd.DataFrame  # patient_id, cohort, label (int or <NA>), split, site, line, ok
    # patient_id, stain, path (absolute), mpp (float or NaN), annotations (absolute or ""),
    # line, ok
    slides: pd.DataFrame


def _closest(value: str, options: list[str] | tuple[str, ...]) -> str | None:
    match = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    if not match:  # case-insensitive exact match counts as close
        match = [o for o in options if o.lower() == value.lower()][:1]
    return match[0] if match else None


def _write(close: str, value: str) -> str:
    """"write 'PAS'", spelling out both names when they look alike but differ in characters
    (a Cyrillic 'А' for a Latin 'A', an invisible space)."""
    if close.casefold() != value.casefold() and not (close.isascii() and value.isascii()) \
            and ascii(close) != ascii(value):
        return f"write '{close}' (you wrote {ascii(value)}, not {ascii(close)})"
    return f"write '{close}'"


def _header_problem(path: Path, problems: Problems) -> bool:
    """An error for two header columns that read alike once case and surrounding spaces are
    ignored (``Label`` and ``label ``, or ``path`` twice): which one lncr would use is not
    something to guess."""
    header = pd.read_csv(path, dtype=str, header=None, nrows=1, keep_default_na=False,
                         encoding="utf-8-sig", skipinitialspace=True).iloc[0].tolist()
    seen: dict[str, str] = {}
    for raw in header:
        key = nfc(str(raw)).strip().lower()
        if key in seen:
            problems.error(path, 1, f"columns {seen[key]!r} and {raw!r} are the same column "
                           "once case and spaces are ignored", "keep one of them",
                           code="duplicate-column")
            return True
        seen[key] = str(raw)
    return False


def _read_csv(path: Path, required: tuple[str, ...], optional: tuple[str, ...],
              problems: Problems) -> pd.DataFrame | None:
    if not path.exists():
        problems.error(path, None, f"file not found: {path}",
                       "check the path in study.yaml (relative to the YAML's folder)",
                       code="missing-table")
        return None
    if path.is_dir():
        problems.error(path, None, "is a folder, not a CSV file",
                       "point study.yaml at the table file inside it", code="missing-table")
        return None
    try:
        if _header_problem(path, problems):
            return None
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                         skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        problems.error(path, None, f"cannot be read as CSV ({shown(str(exc), 200)})",
                       "save it as comma-separated UTF-8 text with a header row",
                       code="unreadable-table")
        return None
    df.columns = [nfc(str(c)).strip().lower() for c in df.columns]
    for col in df.columns:
        if col not in required + optional:
            close = _closest(col, required + optional)
            problems.warning(path, 1, f"unknown column '{col}' is ignored",
                             f"rename it to '{close}'" if close else
                             f"known columns: {', '.join(required + optional)}",
                             code="unknown-column")
    missing = [c for c in required if c not in df.columns]
    if missing:
        problems.error(path, 1, f"missing required column(s): {', '.join(missing)}",
                       f"the header must contain {', '.join(required)}", code="missing-column")
        return None
    df = df.apply(lambda s: s.str.strip().map(nfc))
    df["line"] = range(2, len(df) + 2)
    df["ok"] = True
    if df.empty:
        problems.error(path, None, "the table has no rows", "add one row per "
                       + ("patient" if "cohort" in required else "slide"), code="empty-table")
    return df


def _check_identifier(path: Path, line: int, kind: str, value: str, problems: Problems) -> bool:
    """An identifier that becomes part of file names: an error if it cannot (control
    characters, too long), a warning if a spreadsheet would read it as a formula."""
    problem = identifier_problem(value)
    if problem:
        problems.error(path, line, f"{kind} {value!r} {problem}", f"identifiers may hold {ALLOWED}",
                       code="bad-identifier")
        return True
    if value.startswith(FORMULA_START):
        problems.warning(path, line, f"{kind} '{value}' begins with '{value[0]}': spreadsheet "
                         "programs opening lncr's CSV files would run it as a formula",
                         "rename it, or import the CSVs as text; lncr itself reads it as "
                         "text", code="formula-identifier")
    return False


def _check_patient_row(row, path: Path, first_line: dict[str, int],
                       problems: Problems) -> bool:
    """Every check of one row of ``patients.csv`` but the label's; True when it has errors."""
    bad = False
    pid = row.patient_id
    if not pid:
        problems.error(path, row.line, "empty patient_id", "give every patient an identifier",
                       code="empty-value")
        bad = True
    elif pid in first_line:
        problems.error(path, row.line, f"duplicate patient '{pid}' (first on line "
                       f"{first_line[pid]})", "keep one row per patient",
                       code="duplicate-patient")
        bad = True
    else:
        first_line[pid] = row.line
        bad = _check_identifier(path, row.line, "patient_id", pid, problems)
    if row.cohort not in COHORTS:
        close = _closest(row.cohort, COHORTS)
        problems.error(path, row.line, f"cohort '{row.cohort}' of patient '{pid}' is not "
                       f"allowed", f"write '{close}'" if close else
                       f"use one of: {', '.join(COHORTS)}", code="bad-cohort")
        bad = True
    if row.split and row.split not in SPLITS:
        close = _closest(row.split, SPLITS)
        problems.error(path, row.line, f"split '{row.split}' of patient '{pid}' is not allowed",
                       f"write '{close}'" if close else "use 'train', 'val' or leave it empty",
                       code="bad-split")
        bad = True
    if row.split and row.cohort in OUTSIDE_SPLIT:
        problems.error(path, row.line, f"{row.cohort} patient '{pid}' has split '{row.split}'",
                       f"leave split empty for {row.cohort} patients: they are never used in "
                       "training or validation", code="split-on-external")
        bad = True
    return bad


def _label(row, path: Path, problems: Problems) -> tuple[int | None, bool]:
    """(the label or None, has an error): development and external patients need 0 or 1,
    prospective ones (to be scored) an empty label."""
    if row.cohort in UNLABELLED:
        if not row.label:
            return None, False
        problems.error(path, row.line, f"prospective patient '{row.patient_id}' has label "
                       f"'{shown(row.label, 40)}'", "leave the label of a patient to be scored empty, or "
                       "make the patient 'external' to evaluate the models on it",
                       code="label-on-prospective")
        return None, True
    if row.label in ("0", "1"):
        return int(row.label), False
    if not row.label:
        problems.error(path, row.line, f"{row.cohort or 'the'} patient '{row.patient_id}' has "
                       "no label", "write 1 for complete response at 12 months, 0 otherwise; "
                       "a patient whose outcome is not known yet belongs to cohort "
                       "'prospective' (scored, never trained or evaluated on)",
                       code="bad-label")
        return None, True
    problems.error(path, row.line, f"label '{shown(row.label, 40)}' of patient "
                   f"'{row.patient_id}' is not 0 or 1", "write 1 for complete response at 12 months, 0 otherwise",
                   code="bad-label")
    return None, True


def _check_case_collisions(df: pd.DataFrame, path: Path, problems: Problems) -> None:
    """Two patients whose IDs differ only in case would share files on macOS and Windows."""
    first: dict[str, tuple[str, int]] = {}
    for row in df.itertuples():
        key = row.patient_id.casefold()
        if row.patient_id and key in first and first[key][0] != row.patient_id:
            problems.error(path, row.line, f"patient '{row.patient_id}' differs from "
                           f"'{first[key][0]}' (line {first[key][1]}) only in case",
                           "file systems that ignore case would mix their files: rename one",
                           code="case-collision")
            df.loc[row.Index, "ok"] = False
        first.setdefault(key, (row.patient_id, row.line))


def read_patients(path: Path, problems: Problems) -> pd.DataFrame | None:
    """Check ``patients.csv`` row by row; labels become integers where valid."""
    df = _read_csv(path, PATIENT_COLUMNS, PATIENT_OPTIONAL, problems)
    if df is None:
        return None
    for col in PATIENT_OPTIONAL:
        if col not in df.columns:
            df[col] = ""
    first_line: dict[str, int] = {}
    labels: list[object] = []
    for row in df.itertuples():
        bad = _check_patient_row(row, path, first_line, problems)
        label, bad_label = _label(row, path, problems)
        labels.append(pd.NA if label is None else label)
        if bad or bad_label:
            df.loc[row.Index, "ok"] = False
    df["label"] = pd.array(labels, dtype="Int64")
    _check_case_collisions(df, path, problems)
    dev = df[df.cohort == "development"]
    given = dev.split != ""
    if given.any() and not given.all():
        for row in dev[~given].itertuples():
            problems.error(path, row.line, f"development patient '{row.patient_id}' has no split "
                           "while others have one", "fill in 'train' or 'val' for every "
                           "development patient, or leave the whole column empty for a seeded "
                           "stratified split", code="partial-split")
            df.loc[row.Index, "ok"] = False
    return df


def _parse_mpp(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _slide_mpp(row, path: Path, problems: Problems) -> tuple[float | None, bool]:
    """The ``mpp`` column of one row: (µm/px or None, has an error)."""
    if not row.mpp:
        return None, False
    mpp = _parse_mpp(row.mpp)
    lo, hi = PLAUSIBLE_MPP
    fix = "write µm per pixel at level 0, e.g. 0.25 for a 40x scan"
    if mpp is None:
        problems.error(path, row.line, f"mpp '{row.mpp}' is not a number", fix, code="bad-mpp")
    elif mpp <= 0:
        problems.error(path, row.line, f"mpp {row.mpp} is not positive", fix, code="bad-mpp")
    elif not lo <= mpp <= hi:
        problems.error(path, row.line, f"mpp {row.mpp} µm/px is implausible for a whole-slide "
                       f"scan (expected {lo}-{hi})", "check the unit: µm per pixel at level 0 "
                       "(0.25 at 40x, 0.5 at 20x)", code="bad-mpp")
    else:
        return mpp, False
    return None, True


@dataclass
class _SlideRows:
    """What the row checks of ``slides.csv`` remember between rows."""

    path: Path
    stains: tuple[str, ...]
    patient_ids: set[str] | None
    problems: Problems
    pairs: dict = field(default_factory=dict)  # (patient, stain) → first line
    files: dict = field(default_factory=dict)  # resolved file → first line

    def check(self, row, full: Path | None) -> bool:
        """Every check of one row but ``mpp``'s; True when it has errors."""
        path, problems = self.path, self.problems
        bad = False
        for col in SLIDE_COLUMNS:
            if not getattr(row, col):
                problems.error(path, row.line, f"empty {col}", f"fill in {col} for this slide",
                               code="empty-value")
                bad = True
        pid, stain = row.patient_id, row.stain
        if pid and self.patient_ids is not None and pid not in self.patient_ids:
            close = _closest(pid, sorted(self.patient_ids))
            problems.error(path, row.line, f"slide of unknown patient '{pid}'",
                           f"did you mean '{close}'? Otherwise add the patient to patients.csv"
                           if close else "add the patient to patients.csv or remove the row",
                           code="unknown-patient")
            bad = True
        if stain and stain not in self.stains:
            close = _closest(stain, self.stains)
            problems.error(path, row.line, f"unknown stain '{stain}'" + (
                           "" if stain.isascii() else f" (written {ascii(stain)})"),
                           _write(close, stain) if close else
                           f"use one of {', '.join(self.stains)} or add the stain to 'stains:' "
                           "in study.yaml", code="unknown-stain")
            bad = True
        joined = joined_name_problem(pid, stain) if pid and stain else None
        if joined:
            problems.error(path, row.line, f"patient_id and stain together {joined}",
                           "shorten the patient ID or the stain name", code="name-too-long")
            bad = True
        if pid and stain:
            bad |= self._repeated(self.pairs, (pid, stain), row.line,
                                  f"second {stain} slide for patient '{pid}' (first on line "
                                  "{first})", "keep one slide per patient and stain",
                                  "duplicate-slide")
        if full is not None:
            bad |= self._repeated(self.files, full, row.line,
                                  f"file {row.path} is also listed on line {{first}}",
                                  "each row must point to its own slide file", "duplicate-path")
        return bad

    def _repeated(self, seen: dict, key, line: int, what: str, fix: str, code: str) -> bool:
        """An error when ``key`` was seen on an earlier line (``what`` names it as
        ``{first}``, replaced, not formatted: identifiers may hold braces); else
        remember this line."""
        if key in seen:
            self.problems.error(self.path, line, what.replace("{first}", str(seen[key])), fix,
                                code=code)
            return True
        seen[key] = line
        return False


def _annotations(row, full: Path | None, base: Path, use: str, path: Path,
                 problems: Problems) -> tuple[str, bool]:
    """The annotation file of one slide (absolute, or "" for none) and whether the row has an
    error: the ``annotations`` column, else a GeoJSON beside the slide (``use: auto``) — beside
    the path as written, then beside the file a symbolic link points to."""
    from lncr.slides.annotations import candidates, found_beside

    if use == "never" or full is None:
        return "", False
    written = Path(os.path.abspath(base / row.path))
    if row.annotations:
        listed = (base / row.annotations).resolve()
        if not listed.is_file():
            problems.error(path, row.line, f"annotation file {row.annotations} does not exist",
                           "check the path (relative to slides.csv's folder), or empty the "
                           "cell to tile the whole slide", code="missing-annotations")
            return "", True
        return str(listed), False
    found = found_beside(written) or found_beside(full)
    if len(found) > 1:
        problems.warning(path, row.line, f"{len(found)} annotation files beside "
                         f"{written.name}: {', '.join(p.name for p in found)}; {found[0].name} "
                         "is used", "name the right one in the 'annotations' column",
                         code="ambiguous-annotations")
    if not found and use == "require":
        problems.error(path, row.line, f"slide {written.name} has no annotations "
                       "(annotations.use: require)", "name its QuPath GeoJSON export in the "
                       f"'annotations' column or save it as {candidates(written)[0].name} beside "
                       "the slide", code="missing-annotations")
        return "", True
    return (str(found[0]) if found else ""), False


def _slide_path(base: Path, row, path: Path, problems: Problems) -> tuple[Path | None, bool]:
    """The slide's absolute path, or an error for a path that cannot be one (a NUL
    character, a symbolic link loop)."""
    if not row.path:
        return None, False
    if "\x00" in row.path:
        problems.error(path, row.line, f"path {shown(row.path, 120)} holds a NUL character",
                       "retype the path", code="bad-path")
        return None, True
    try:
        return (base / row.path).resolve(), False
    except (RuntimeError, OSError) as exc:  # "Symlink loop" (RuntimeError on Python 3.11)
        problems.error(path, row.line, f"path {row.path} cannot be resolved ({exc})",
                       "a symbolic link on it points back to itself: fix the link",
                       code="bad-path")
        return None, True


def read_slides(path: Path, stains: tuple[str, ...], patient_ids: set[str] | None,
                problems: Problems, annotations: str = "auto") -> pd.DataFrame | None:
    """Check ``slides.csv`` row by row (file contents are checked separately); find each
    slide's annotation file (``annotations``: the ``annotations.use`` setting)."""
    df = _read_csv(path, SLIDE_COLUMNS, SLIDE_OPTIONAL, problems)
    if df is None:
        return None
    for col in SLIDE_OPTIONAL:
        if col not in df.columns:
            df[col] = ""
    base = path.resolve().parent
    rows = _SlideRows(path, stains, patient_ids, problems)
    absolute, mpps, regions = [], [], []
    for row in df.itertuples():
        full, bad_path = _slide_path(base, row, path, problems)
        absolute.append(str(full) if full else "")
        bad = rows.check(row, full) or bad_path
        mpp, bad_mpp = _slide_mpp(row, path, problems)
        mpps.append(mpp if mpp is not None else float("nan"))
        found, bad_regions = _annotations(row, full, base, annotations, path, problems)
        regions.append(found)
        if bad or bad_mpp or bad_regions:
            df.loc[row.Index, "ok"] = False
    df["path"] = absolute
    df["annotations"] = regions
    df["mpp"] = pd.array(mpps, dtype="float64")
    return df
