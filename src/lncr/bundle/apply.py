"""``lncr apply BUNDLE``: score new patients with an exported final ensemble.

Builds the scoring study (:mod:`lncr.bundle.scoring_study`), then runs the study's own stages
on it: the slide checks of ``lncr validate`` (a slide that cannot be read, or whose µm/px is
implausible, is refused with the reason and the others go on), ``lncr tile`` with the bundle's
settings and fixed references, ``lncr predict`` (every final model, the single-stain and
multi-stain ensembles with the missing-stain rule) and ``lncr explain heatmap``. The bundle's
development threshold turns each probability into a predicted class. Written to ``out``:

- ``scores.csv`` — one row per patient: P(CR) of the multi-stain ensemble, the predicted class
  at the threshold, the stains used and missing, and every stain ensemble and single model;
- ``scores.json`` — the same with the threshold's validation and external performance, the
  refused slides and the bundle's provenance;
- ``reports/<patient>.html`` — the one-page patient report (:mod:`lncr.bundle.patient_report`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lncr.bundle.archive import Bundle, BundleError, open_bundle, safe_part
from lncr.bundle.scoring_study import SLIDE_COLUMNS, build_scoring_study
from lncr.errors import BadInput, LncrError
from lncr.evaluation.cohort_metrics import MULTI
from lncr.fileio import atomic_write_json
from lncr.layout import Layout, write_table


@dataclass
class Scored:
    """What :func:`apply_bundle` wrote and found."""

    folder: Path
    scores: pd.DataFrame  # one row per patient
    single: pd.DataFrame  # patient × stain × magnification
    stains: pd.DataFrame  # patient × stain
    refused: pd.DataFrame  # patient_id, stain, path, reason
    reports: dict[str, Path] = field(default_factory=dict)
    bundle: Bundle | None = None


def slides_from_pairs(patient_id: str, pairs: list[str]) -> pd.DataFrame:
    """One patient's slides from ``STAIN=PATH`` pairs (paths made absolute)."""
    rows = []
    for pair in pairs:
        stain, sep, path = pair.partition("=")
        if not sep or not stain.strip() or not path.strip():
            raise BadInput(f"--slide {pair!r}: write STAIN=PATH, e.g. --slide HE=biopsy-he.svs")
        rows.append({"patient_id": patient_id, "stain": stain.strip(),
                     "path": os.path.abspath(Path(path.strip()).expanduser()), "mpp": ""})
    return pd.DataFrame(rows, columns=list(SLIDE_COLUMNS))


def read_slide_table(path: Path) -> pd.DataFrame:
    """A table of slides to score (``patient_id, stain, path[, mpp][, annotations]``; paths
    relative to the table's folder). Other columns (a ``label``, a ``cohort``) are not read:
    scoring never sees an outcome."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot be read as a CSV table ({exc}); give patient_id, stain, "
                       "path and optionally mpp and annotations columns") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("patient_id", "stain", "path") if c not in table.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(missing)}; a slides table to score "
                       "has patient_id, stain, path and optionally mpp and annotations")
    table = table.apply(lambda s: s.str.strip())
    base = path.resolve().parent
    for col in ("path", "annotations"):
        if col in table:
            # absolute, not resolved: a link that cannot be followed is refused with its
            # reason by the slide checks, with the other slides still scored
            table[col] = [os.path.abspath(base / p) if p else "" for p in table[col]]
    return table.reindex(columns=list(SLIDE_COLUMNS), fill_value="")


def _checked_study(study_yaml: Path, workers: int):
    """The scoring study after the slide checks, and the slides it refused: rows with errors
    are dropped (their patients too, when nothing is left) and the study reloaded."""
    from lncr.study.validate import load_study, save_study_record

    study = load_study(study_yaml, workers=workers)
    refused = []
    if study.slides is not None and study.patients is not None:
        errors = study.problems.errors
        patient_line = {r.patient_id: r.line for r in study.patients.itertuples()
                        if not r.ok}
        for row in study.slides.itertuples():
            if row.ok and row.patient_id not in patient_line:
                continue
            reasons = [p.message for p in errors if (p.file, p.line) in (
                ("slides.csv", row.line), ("patients.csv", patient_line.get(row.patient_id)))]
            refused.append({"patient_id": row.patient_id, "stain": row.stain, "path": row.path,
                            "reason": "; ".join(reasons) or "refused by the slide checks"})
    refused = pd.DataFrame(refused, columns=["patient_id", "stain", "path", "reason"])
    if len(refused):
        _drop_refused(study_yaml, refused)
        study = load_study(study_yaml, workers=workers)
    if not study.ok:
        raise BadInput("the slides to score have errors:\n  "
                       + "\n  ".join(str(e) for e in study.problems.errors[:10]))
    save_study_record(study)
    return study, refused


def _drop_refused(study_yaml: Path, refused: pd.DataFrame) -> None:
    from lncr.bundle.scoring_study import write_inputs

    folder = study_yaml.parent
    slides = pd.read_csv(folder / "inputs" / "slides.csv", dtype=str, keep_default_na=False)
    gone = set(zip(refused.patient_id, refused.stain, refused.path))
    keep = slides[[(p, s, f) not in gone for p, s, f in zip(slides.patient_id, slides.stain,
                                                            slides.path)]]
    if keep.empty:
        raise BadInput("no slide can be scored:\n  " + "\n  ".join(
            f"{r.patient_id} {r.stain} {r.path}: {r.reason}" for r in refused.itertuples()))
    write_inputs(folder, keep)


def _tiling_refusals(study) -> pd.DataFrame:
    """Slides whose tiling failed at every magnification, with the error."""
    index = Layout(study.config.output_dir).read_tiles_index()
    rows = []
    for (pid, stain), g in index.groupby(["patient_id", "stain"]):
        if not (g.status == "ok").any():
            errors = [e for e in g.error if isinstance(e, str) and e]
            rows.append({"patient_id": pid, "stain": stain, "path": g.slide.iloc[0],
                         "reason": errors[0] if errors else "no tissue tile kept"})
    return pd.DataFrame(rows, columns=["patient_id", "stain", "path", "reason"])


def score_table(single: pd.DataFrame, stains: pd.DataFrame, multi: pd.DataFrame,
                thresholds: dict) -> pd.DataFrame:
    """One row per patient: the multi-stain P(CR), the class at the bundle's threshold, the
    stains used and missing, then every stain ensemble and single model (``p_HE``,
    ``p_HE_10x``)."""
    t = thresholds[MULTI]["threshold"]
    out = multi[["patient_id", "probability", "stains_used", "stains_missing"]].copy()
    out = out.rename(columns={"probability": "p_cr"})
    out["threshold"] = t
    out["predicted"] = [("CR" if p >= t else "non-CR") if p == p else "" for p in out.p_cr]
    for stain, part in stains.groupby("stain", sort=False):
        out[f"p_{stain}"] = out.patient_id.map(dict(zip(part.patient_id, part.probability)))
    for (stain, mag), part in single.groupby(["stain", "magnification"], sort=False):
        out[f"p_{stain}_{mag}"] = out.patient_id.map(dict(zip(part.patient_id,
                                                              part.probability)))
    return out


@dataclass
class Steps:
    """Progress callbacks: ``stage(name)`` when a stage starts, ``tiles(what, done, total)``
    per tiled slide × magnification, ``slides(what)`` per explained slide."""

    stage: Callable[[str], None] = lambda name: None
    tiles: Callable[[str, int, int], None] | None = None
    slides: Callable[[str], None] | None = None


def _counter(tiles: Callable[[str, int, int], None] | None):
    """``tile_study``'s per-unit callback as counts of the slide × magnification units."""
    if tiles is None:
        return None

    def progress(result, done: int, total: int) -> None:
        u = result.unit
        tiles(f"{u.patient_id} {u.stain} {u.magnification}", done, total)
    return progress


def apply_bundle(bundle_path: str | Path, slides: pd.DataFrame, out: Path,
                 device: str = "auto", workers: int = 1, heatmaps: bool = True,
                 steps: Steps | None = None) -> Scored:
    """Score every patient of ``slides`` (``patient_id, stain, path[, mpp]``) with the bundle;
    see the module docstring for what is written to ``out``."""
    from lncr.bundle.patient_report import write_patient_reports
    from lncr.evaluation.final_predictions import predict_final
    from lncr.tiling.run import tile_study

    steps = steps or Steps()
    steps.stage("open bundle")
    bundle = open_bundle(bundle_path)
    study_yaml = build_scoring_study(Path(out), bundle, slides)
    check_models(Path(out), bundle, device)
    steps.stage("check slides")
    study, refused = _checked_study(study_yaml, workers)
    steps.stage("tile")
    tile_study(study, workers=workers, progress=_counter(steps.tiles))
    refused = pd.concat([refused, _tiling_refusals(study)], ignore_index=True)
    steps.stage("predict")
    predictions = predict_final(study, device=device)
    thresholds = bundle.json(bundle.manifest["thresholds"])
    scores = score_table(predictions.single, predictions.stains, predictions.multi, thresholds)
    influential = None
    if heatmaps:
        steps.stage("explain")
        from lncr.explain.heatmap_run import explain_heatmaps

        influential = explain_heatmaps(study, "prospective", None, device, steps.slides,
                                       {k: v["threshold"] for k, v in thresholds.items()})
    steps.stage("report")
    result = Scored(Path(out), scores, predictions.single, predictions.stains, refused,
                    bundle=bundle)
    _write_scores(result, thresholds)
    result.reports = write_patient_reports(result, study, thresholds, influential)
    return result


def check_models(out: Path, bundle: Bundle, device: str) -> None:
    """Before any slide is read: the device exists, and every bundled model is the
    architecture its manifest names and loads into it (weights, backbone file) — a bundle
    altered or built wrongly is refused naming the model."""
    from lncr.data.distributed import resolve_device
    from lncr.training.predict import load_run

    resolve_device(device)
    runs = Layout((out / "lncr-output").resolve()).final_runs
    for m in bundle.manifest["models"]:
        folder = runs / safe_part(m["key"])
        recorded = json.loads((folder / "config.json").read_text())["settings"]["architecture"]
        if recorded != m["architecture"]:
            raise BundleError(f"{bundle.path}: model {m['key']} is {recorded!r} in its config "
                              f"but {m['architecture']!r} in the manifest: the bundle was "
                              "altered; export it again from its study")
        try:
            load_run(folder, m["checkpoint"], "cpu")
        except LncrError:
            raise  # names its file already (a backbone file that does not fit, …)
        except (RuntimeError, KeyError, TypeError) as exc:  # load_state_dict's mismatch
            first = str(exc).strip().splitlines()[:2]
            raise BundleError(f"{bundle.path}: the weights of model {m['key']} do not fit its "
                              f"architecture {recorded!r} ({' '.join(first)[:200]}): the bundle "
                              "was altered or built wrongly; export it again from its study"
                              ) from exc


def _write_scores(result: Scored, thresholds: dict) -> None:
    from lncr.provenance import training_versions

    out, bundle = result.folder, result.bundle
    write_table(out / "scores.csv", result.scores)
    write_table(out / "refused.csv", result.refused)
    patients = json.loads(result.scores.to_json(orient="records"))
    atomic_write_json(out / "scores.json", {
        "patients": patients, "threshold": thresholds[MULTI],
        "refused": result.refused.to_dict("records"),
        "bundle": {"file": bundle.path.name, "sha256": bundle.sha256,
                   "study": bundle.manifest.get("study"),
                   "lncr_version": bundle.manifest.get("lncr_version"),
                   "trained": bundle.manifest.get("trained"),
                   "intended_use": bundle.manifest.get("intended_use")},
        "versions": training_versions()})
