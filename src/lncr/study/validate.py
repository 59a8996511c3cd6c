"""``lncr validate``: load a study, check everything, report every problem at once.

Checks, each reported with file, line and fix: the YAML settings; every row of both tables;
cross-table consistency (slides of unknown patients, patients without slides, missing stains);
every slide file (exists, opens, decodes, has a plausible µm/px in its metadata or the ``mpp``
column). Errors make the study unusable; warnings (a patient lacking one stain, a label class
missing from a cohort) do not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from lncr import __version__
from lncr.errors import BadInput, LncrError
from lncr.fileio import atomic_write_json, atomic_write_text
from lncr.slides.reader import PLAUSIBLE_MPP, SlideInfo, SlideReadError, probe_slide
from lncr.study.config import StudyConfig, StudyConfigError, config_to_dict
from lncr.study.config_file import load_config
from lncr.study.report import Problems
from lncr.study.split import resolve_split, write_split
from lncr.study.tables import COHORTS, read_patients, read_slides


@dataclass(frozen=True)
class Study:
    """A loaded study: settings, both tables, the development split and what validation found.

    Every stage's Python API takes one. Load it from a file with :meth:`Study.load` (checked:
    raises on errors), or build the settings in code and call :meth:`Study.from_config`.
    Treat it as read-only: the tables are shared by every stage that receives it.
    """

    yaml_path: Path | None
    config: StudyConfig | None
    patients: pd.DataFrame | None
    slides: pd.DataFrame | None
    problems: Problems = field(default_factory=Problems)
    split: pd.DataFrame | None = None
    split_source: str | None = None
    overrides: tuple[str, ...] = ()  # the ``--set`` strings it was loaded with (recorded)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | dict | None = None) -> Study:
        """The study in ``path`` with ``overrides``, checked (slide files are not opened);
        raises :class:`StudyHasErrors` listing its errors when it has any."""
        return usable_study(path, overrides)

    @classmethod
    def from_config(cls, config: StudyConfig, yaml_path: str | Path | None = None) -> Study:
        """A study whose settings were built in code (``StudyConfig(patients=…, slides=…,
        output_dir=…)`` with absolute paths), checked like :meth:`load`."""
        study = check_study(config, Path(yaml_path) if yaml_path else None, (), False, 4)
        return _usable(study, yaml_path or config.output_dir)

    @property
    def source(self) -> dict:
        """Where the study came from, as recorded in every run (``lncr predict`` reloads it)."""
        return {"study": str(self.yaml_path.resolve()) if self.yaml_path else None,
                "overrides": list(self.overrides)}

    @property
    def ok(self) -> bool:
        return not self.problems.errors

    def summary(self) -> dict:
        """Counts for the summary table (empty parts when a table could not be read)."""
        out: dict = {}
        if self.patients is not None:
            p = self.patients
            out["patients"] = {
                cohort: {**{str(lbl): int((g.label == lbl).sum()) for lbl in (1, 0)},
                         "unlabelled": int(g.label.isna().sum())}
                for cohort, g in p.groupby("cohort") if cohort in COHORTS}
        if self.slides is not None and self.config is not None and self.patients is not None:
            s = self.slides
            cohort_of = dict(zip(self.patients.patient_id, self.patients.cohort))
            s = s.assign(cohort=s.patient_id.map(cohort_of))
            out["slides"] = {stain: {c: int(((s.stain == stain) & (s.cohort == c)).sum())
                                     for c in COHORTS}
                             for stain in self.config.stains}
            have = s.groupby("patient_id").stain.apply(set).to_dict()
            if "reader" in s:
                out["readers"] = {k: int(v) for k, v in s.reader.dropna().value_counts()
                                  .sort_index().items()}
            out["annotated_slides"] = int((s.annotations != "").sum())
            out["missing_stains"] = {
                pid: [st for st in self.config.stains if st not in have.get(pid, set())]
                for pid in self.patients.patient_id if pid
                if any(st not in have.get(pid, set()) for st in self.config.stains)}
        if self.split is not None:
            out["split"] = {"source": self.split_source,
                            **{name: {str(lbl): int(((self.split.split == name)
                                                     & (self.split.label == lbl)).sum())
                                      for lbl in (1, 0)} for name in ("train", "val")}}
        return out


def _check_files(study: Study, workers: int) -> None:
    """Open every slide (in threads: OpenSlide releases the GIL) and check its µm/px."""
    slides, problems, src = study.slides, study.problems, study.config.slides
    rows = [r for r in slides.itertuples() if r.path]

    def probe(path: str):
        try:
            return probe_slide(path), None
        except SlideReadError as exc:
            return None, exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(probe, [r.path for r in rows]))
    lo, hi = PLAUSIBLE_MPP
    for row, (info, err) in zip(rows, results):
        if err is not None:
            missing = not Path(row.path).exists()
            problems.error(src, row.line, f"slide file {row.path} " + (
                "does not exist" if missing else f"cannot be read: {str(err).split(': ', 1)[-1]}"),
                "check the path (relative to slides.csv's folder)" if missing else
                "re-export the slide from the scanner software, or remove the row",
                code="missing-file" if missing else "unreadable-file")
            slides.loc[row.Index, "ok"] = False
            continue
        slides.loc[row.Index, "reader"] = info.backend
        if row.annotations and not _check_annotations(study, row, info):
            slides.loc[row.Index, "ok"] = False
        column_mpp = row.mpp if pd.notna(row.mpp) else None
        if column_mpp is None:
            if info.mpp is None:
                problems.error(src, row.line, f"slide {Path(row.path).name} has no µm/px in its "
                               "metadata", "add its level-0 µm per pixel in an 'mpp' column "
                               "(0.25 for a 40x scan)", code="missing-mpp")
                slides.loc[row.Index, "ok"] = False
            elif not lo <= info.mpp <= hi:
                problems.error(src, row.line, f"slide {Path(row.path).name} reports an implausible "
                               f"{info.mpp:.4g} µm/px", "give the correct value in the 'mpp' column",
                               code="bad-mpp")
                slides.loc[row.Index, "ok"] = False
        elif info.mpp is not None and abs(info.mpp - column_mpp) / info.mpp > 0.1:
            problems.warning(src, row.line, f"mpp column {column_mpp:g} overrides the file's "
                             f"{info.mpp:.4g} µm/px", "remove the mpp value if the file is right",
                             code="mpp-override")


def _check_annotations(study: Study, row, info: SlideInfo) -> bool:
    """A slide's annotation file reads as regions that leave some of the slide to tile."""
    from lncr.slides.annotations import AnnotationError, slide_regions

    src, name = study.config.slides, Path(row.annotations).name
    try:
        regions = slide_regions(row.annotations, info.bounds_offset,
                                study.config.annotations.rules())
    except AnnotationError as exc:
        study.problems.error(src, row.line, str(exc), "re-export the slide's annotations from "
                             "QuPath (File → Export objects as GeoJSON), or remove the file",
                             code="bad-annotations")
        return False
    w, h = info.dimensions
    scale = max(w, h) / 512
    if not regions.mask(0, 0, max(1, round(w / scale)), max(1, round(h / scale)), scale).any():
        box = ", ".join(f"{v:.0f}" for v in regions.bbox() or ())
        study.problems.error(src, row.line, f"annotations {name} leave nothing of "
                             f"{Path(row.path).name} ({w}×{h} px) to tile (regions span "
                             f"{box})", "check that they were exported from this slide; for a "
                             "slide QuPath did not crop to its scanned area, set "
                             "annotations.crop_to_bounds: false", code="annotations-outside")
        return False
    return True


def _check_coverage(study: Study) -> None:
    patients, slides, problems = study.patients, study.slides, study.problems
    cfg = study.config
    have = slides.groupby("patient_id").stain.apply(set).to_dict()
    absent = [s for s in cfg.stains if s not in set(slides.stain)]
    if absent:  # said once, not once per patient
        problems.warning(cfg.slides, None, f"no slide of stain(s) {', '.join(absent)}, which "
                         "study.yaml lists under stains: they get no tiles and no model (the "
                         "sweep says so and exits 1)", "remove them from stains: or add their "
                         "slides", code="stain-without-slides")
    for row in patients.itertuples():
        if not row.patient_id:
            continue
        stains = have.get(row.patient_id, set())
        if not stains:
            problems.error(cfg.patients, row.line, f"patient '{row.patient_id}' has no slides",
                           "add the patient's slides to slides.csv or remove the patient",
                           code="patient-without-slides")
            patients.loc[row.Index, "ok"] = False
        else:
            missing = [s for s in cfg.stains if s not in stains and s not in absent]
            if missing:
                problems.warning(cfg.patients, row.line, f"patient '{row.patient_id}' lacks "
                                 f"stain(s) {', '.join(missing)}", "ensembles use the stains "
                                 "that exist; add the slides if they were forgotten",
                                 code="missing-stain")
    for cohort in ("development", "external"):
        labels = set(patients[patients.cohort == cohort].label.dropna().astype(int))
        n = int((patients.cohort == cohort).sum())
        if n and labels != {0, 1}:
            problems.warning(cfg.patients, None, f"the {cohort} cohort has only label(s) "
                             f"{sorted(labels)}", "AUC needs patients of both labels",
                             code="one-class-cohort")
    if not (patients.cohort == "development").any():
        if (patients.cohort == "prospective").any():  # a study that only scores (lncr apply)
            problems.warning(cfg.patients, None, "no development patients: this study can "
                             "only score its patients with models trained elsewhere",
                             "`lncr apply BUNDLE` scores them; training stages refuse it",
                             code="no-development")
        else:
            problems.error(cfg.patients, None, "no development patients",
                           "models are trained on the development cohort: add some",
                           code="no-development")


def _check_models(cfg: StudyConfig, path: Path, problems: Problems) -> None:
    """Every architecture the study trains exists and builds; settings that leave the study's
    recipe are named. A registered name needs no check (no PyTorch import: commands that build
    no model start quickly); any other is built on the meta device (no memory, no download)
    once, and the verdict kept in ``<output_dir>/study/architectures.json`` per library
    versions."""
    from lncr.study.recipes import recipe_deviations

    names = dict.fromkeys([*cfg.sweep.architectures, cfg.training.architecture])
    cache = _ModelChecks(cfg.output_dir / "study" / "architectures.json")
    for name in names:
        problem = cache.problem(name, cfg.training.embedding_dim)
        if problem:
            where = ("sweep.architectures" if name in cfg.sweep.architectures
                     else "training.architecture")
            problems.error(path, None, f"{where}: {problem}",
                           "use a registered name (lncr.models.backbones.list_backbones()), "
                           "a torchvision classifier or timm:<name>", code="bad-architecture")
    for key, (recipe, mine) in recipe_deviations(cfg).items():
        problems.warning(path, None, f"{key} = {mine!r} leaves recipe '{cfg.recipe}' "
                         f"({recipe!r})", f"remove {key} from the study to follow the recipe",
                         code="leaves-recipe")


class _ModelChecks:
    """Verdicts of architecture checks, remembered in a small JSON file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.known = json.loads(path.read_text())
        except (OSError, ValueError):
            self.known = {}
        if not isinstance(self.known, dict):
            self.known = {}

    def problem(self, name: str, embedding_dim: int) -> str:
        from lncr.models.names import REGISTERED, check_key

        if name in REGISTERED:
            return ""
        key = check_key(name, embedding_dim)
        if not isinstance(self.known.get(key), str):
            self.known[key] = _model_problem(name, embedding_dim)
            with contextlib.suppress(OSError, LncrError):  # a read-only folder: not kept
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.path, self.known)
        return self.known[key]


@functools.lru_cache(maxsize=64)
def _model_problem(name: str, embedding_dim: int) -> str:
    from lncr.models.backbones import check_backbone

    try:
        check_backbone(name, embedding_dim)
    except ValueError as exc:
        return str(exc)
    return ""


def _override_strings(overrides: list[str] | dict | None) -> tuple[str, ...]:
    if not overrides:
        return ()
    if isinstance(overrides, dict):
        return tuple(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in overrides.items())
    return tuple(overrides)


def load_study(path: str | Path, overrides: list[str] | dict | None = None,
               check_files: bool = True, workers: int = 4) -> Study:
    """Load and check a study without raising on data problems: every problem found is in
    ``study.problems``. Only an unreadable ``study.yaml`` leaves ``config`` empty."""
    path = Path(path)
    try:
        config = load_config(path, overrides)
    except StudyConfigError as exc:
        study = Study(path, None, None, None, overrides=_override_strings(overrides))
        for msg in exc.problems:
            study.problems.error(path, None, msg, code="bad-config")
        return study
    return check_study(config, path, _override_strings(overrides), check_files, workers)


def check_study(cfg: StudyConfig, path: Path | None, overrides: tuple[str, ...],
                check_files: bool, workers: int) -> Study:
    """Read the tables of ``cfg`` and check everything (see :func:`load_study`)."""
    problems = Problems()
    where = path or cfg.output_dir
    _check_models(cfg, where, problems)
    patients = read_patients(cfg.patients, problems)
    ids = set(patients.patient_id) - {""} if patients is not None else None
    slides = read_slides(cfg.slides, cfg.stains, ids, problems, cfg.annotations.use)
    study = Study(path, cfg, patients, slides, problems, overrides=overrides)
    if patients is not None and slides is not None:
        _check_coverage(study)
    if slides is not None and check_files:
        _check_files(study, workers)
    if patients is None or problems.errors:
        return study
    split, source = resolve_split(patients, cfg.split.val_fraction, cfg.split.seed)
    val = split[split.split == "val"]
    if len(split) and set(val.label) != {0, 1}:
        problems.warning(cfg.patients, None, "the validation split does not hold both labels",
                         "raise split.val_fraction or add patients", code="one-class-val")
    return dataclasses.replace(study, split=split, split_source=source)


class StudyHasErrors(BadInput):
    """A stage was asked to run on a study that ``lncr validate`` rejects."""


def usable_study(path: str | Path, overrides: list[str] | dict | None = None) -> Study:
    """The study, loaded and checked (slide files are not opened); raises
    :class:`StudyHasErrors` listing its errors when it has any. Every stage starts here."""
    return _usable(load_study(path, overrides, check_files=False), path)


def _usable(study: Study, path: str | Path) -> Study:
    if not study.ok or study.config is None:
        errors = study.problems.errors
        more = f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise StudyHasErrors(f"the study has {len(errors)} error(s); run `lncr validate {path}` "
                             "and fix them:\n  " + "\n  ".join(str(e) for e in errors[:10])
                             + more)
    return study


def save_study_record(study: Study) -> Path:
    """Write the split and the effective settings to ``<output_dir>/study/`` and return it.

    Raises :class:`lncr.study.split.SplitMismatchError` if a different split is already there.
    """
    if not study.ok or study.config is None or study.split is None:
        raise ValueError("only a study without errors can be recorded")
    cfg = study.config
    folder = cfg.output_dir / "study"
    from lncr.locks import output_lock

    with output_lock(cfg.output_dir, "lncr validate"):
        return _record(study, folder)


def _record(study: Study, folder: Path) -> Path:
    cfg = study.config
    write_split(folder, study.split, study.split_source or "seeded", cfg.split.val_fraction,
                cfg.split.seed)
    effective = {"lncr_version": __version__, "study_yaml": (str(study.yaml_path.resolve())
                                                    if study.yaml_path else None),
                 "settings": config_to_dict(cfg)}
    atomic_write_text(folder / "config.yaml",
                      "# Effective settings of this study (study.yaml + defaults + overrides)\n"
                      + yaml.safe_dump(effective, sort_keys=False))
    atomic_write_json(folder / "summary.json", study.summary())
    return folder
