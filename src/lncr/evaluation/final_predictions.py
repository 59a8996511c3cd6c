"""``lncr predict STUDY.yaml``: every final model on every patient, and the two ensembles.

Reads ``<output_dir>/final/models.csv`` (written by ``lncr sweep``) and writes
``<output_dir>/predictions/``:

- ``single_models.csv`` — one row per patient × stain × magnification: the final model's
  probability (the mean over the patient's slides of that stain, if several; ``slides`` counts
  them), with the patient's cohort, split and label and the model's configuration;
- ``stain_ensembles.csv`` — one row per patient × stain: the mean over the magnifications the
  patient has (``magnifications_used``, ``complete``);
- ``multi_stain.csv`` — one row per patient of the study: the maximum over the single-stain
  ensembles it has (``stains_used``, ``stains_missing``); a patient without any prediction keeps
  a row with no probability;
- ``predictions.json`` — the checkpoint and tile choice, the models and package versions.

Each model predicts with ``evaluation.checkpoint`` (``last`` by default: the final weights, so
that validation patients did not pick the checkpoint) and ``evaluation.tiles``. With
``sweep.validation: kfold`` (``final/folds.csv`` exists), a final model was trained on every
development patient: the development patients are predicted instead by the fold model that
held each of them out (their ``split`` is ``val``: every one is a validation patient, out of
fold), and the final model predicts the external and prospective patients. A model's
predictions from an earlier run are reused when its checkpoint and the slides (labels, sides,
tile stores) are unchanged (``predict_run(reuse=True)``), so an interrupted demo or study
resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lncr.evaluation.ensemble import multi_stain_ensemble, stain_ensembles
from lncr.fileio import atomic_write_json
from lncr.layout import Layout, write_table
from lncr.locks import output_lock
from lncr.sharding import MERGE_WAIT, Shard
from lncr.study.tables import OUTSIDE_SPLIT
from lncr.study.validate import Study


@dataclass
class FinalPredictions:
    folder: Path
    single: pd.DataFrame
    stains: pd.DataFrame
    multi: pd.DataFrame
    unusable: dict[str, list[dict]] = field(default_factory=dict)  # "HE 20x" → patients
    missing: list[dict] = field(default_factory=list)  # final models that do not exist, why


def final_models(output_dir: Path) -> pd.DataFrame:
    """The study's final models (``final/models.csv``), or a clear error."""
    return Layout(Path(output_dir)).read_final_models()


def patient_sides(output_dir: Path, patients: pd.DataFrame, out_of_fold: bool = False
                  ) -> pd.DataFrame:
    """``patient_id, cohort, label, split`` for every patient (external and prospective
    patients: their cohort as split; ``out_of_fold``: every development patient ``val``)."""
    split = Layout(Path(output_dir)).read_split()
    sides = dict(zip(split.patient_id, ["val"] * len(split) if out_of_fold else split.split))
    out = patients[["patient_id", "cohort", "label"]].copy()
    out["split"] = [(c if c in OUTSIDE_SPLIT else sides.get(p, ""))
                    for p, c in zip(out.patient_id, out.cohort)]
    return out.sort_values("patient_id").reset_index(drop=True)


def ensemble_tables(single: pd.DataFrame, sides: pd.DataFrame, cfg
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The study's ensembles of per-patient single-model probabilities (``patient_id, stain,
    magnification, probability``, …): the three prediction tables, each with the patients'
    sides (:func:`patient_sides`)."""
    single = single.merge(sides, on="patient_id", how="left")
    per_stain = stain_ensembles(single, cfg.magnification_labels(), cfg.ensemble.within_stain)
    multi = multi_stain_ensemble(per_stain.drop(columns=["label", "cohort"]), cfg.stains,
                                 patients=list(sides.patient_id), how=cfg.ensemble.across_stains)
    per_stain = per_stain.drop(columns=["label", "cohort"]).merge(sides, on="patient_id",
                                                                   how="left")
    multi = multi.merge(sides, on="patient_id", how="left")
    return single, per_stain, multi


def ready_models(study: Study, models: pd.DataFrame | None = None) -> pd.DataFrame:
    """The final models that finished (of ``models``, by default ``final/models.csv``), or a
    clear error."""
    if models is None:
        models = final_models(study.config.output_dir)
    ready = models[models.status == "done"]
    if ready.empty:
        raise ValueError(f"none of the final models in {study.config.output_dir / 'final'} "
                         "finished; re-run `lncr sweep` (models.csv lists their errors)")
    return ready


def predict_final(study: Study, device: str = "auto", workers: int = 0,
                  progress: Callable[[str, int, int], None] | None = None) -> FinalPredictions:
    """Predict with every finished final model, build the ensembles, write the tables;
    ``progress(model, done, total)`` after each model."""
    with output_lock(study.config.output_dir, "lncr predict"):
        return _predict_all(study, device, workers, progress)


def predict_shard(study: Study, shard: Shard, device: str = "auto", workers: int = 0,
                  progress: Callable[[str, int, int], None] | None = None) -> str:
    """``lncr predict STUDY.yaml --shard i/n``: predict with every n-th final model (each
    writes into its own run folder), under a lock of this shard alone; then, when every
    model has its predictions, build the ensembles from them. Returns "" when it did, else
    why not (another shard has not finished, or the folder stayed busy)."""
    from lncr.locks import OutputBusy
    from lncr.training.predict import NotPredictedYet

    ready = ready_models(study)
    folds = Layout(study.config.output_dir).read_final_folds()
    mine = shard.select(list(ready.itertuples()), key=lambda m: (m.stain, m.magnification))
    folder = Layout(study.config.output_dir).predictions_dir / "shards" / shard.name
    with output_lock(folder, f"lncr predict --shard {shard}"):
        for k, m in enumerate(mine, 1):
            slides = _model_slides(study, m, folds, device, workers, reuse=True)
            if progress:
                progress(f"{m.stain} {m.magnification}: {0 if slides is None else len(slides)} "
                         "slides", k, len(mine))
    try:
        with output_lock(study.config.output_dir, "lncr predict (merge)", MERGE_WAIT):
            _predict_all(study, device, workers, None, reuse="only")
    except (NotPredictedYet, OutputBusy) as exc:
        return str(exc)
    return ""


def _predict_model(study: Study, m, folder: str, cohort: str, device: str, workers: int,
                   reuse: bool | str) -> pd.DataFrame | None:
    """The slide predictions of the run in ``folder`` (final model ``m``'s configuration) for
    ``cohort`` (None when no slide of that cohort has its stain's tiles)."""
    from lncr.data.entries import study_entries
    from lncr.training.predict import predict_run, run_sides, select

    entries = run_sides(Path(folder), study_entries(study, m.stain, m.magnification))
    if not select(entries, cohort):
        return None
    ev = study.config.evaluation
    slides = predict_run(folder, cohort, ev.checkpoint, ev.tiles, study=study, device=device,
                         workers=workers, reuse=reuse)
    slides["architecture"], slides["bag_size"] = m.architecture, m.bag_size
    slides["run"] = folder
    return slides


def _model_slides(study: Study, m, folds: pd.DataFrame | None, device: str, workers: int,
                  reuse: bool | str) -> pd.DataFrame | None:
    """Final model ``m``'s slide predictions: every patient; or with k-fold (``folds``:
    ``final/folds.csv``) the development patients out of fold, by the fold model that held
    each out, and the others by ``m``."""
    if folds is None:
        return _predict_model(study, m, m.folder, "all", device, workers, reuse)
    mine = folds[(folds.stain == m.stain) & (folds.magnification == m.magnification)
                 & (folds.status == "done")]
    parts = [_predict_model(study, m, f, "val", device, workers, reuse) for f in mine.folder]
    if m.folder:
        parts.append(_predict_model(study, m, m.folder, "outside", device, workers, reuse))
    else:  # sweep.final_ensemble: folds — the mean of the fold models
        parts.append(_fold_mean([_predict_model(study, m, f, "outside", device, workers,
                                                reuse) for f in mine.folder]))
    parts = [p for p in parts if p is not None]
    return pd.concat(parts, ignore_index=True) if parts else None


def _fold_mean(members: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    """The fold models' predictions of the same slides, averaged slide by slide."""
    members = [t for t in members if t is not None]
    if not members:
        return None
    mean = members[0].copy()
    mean["probability"] = sum(t.probability.to_numpy() for t in members) / len(members)
    mean["run"] = f"mean of {len(members)} fold models"
    return mean


def _predict_all(study: Study, device: str, workers: int,
                 progress: Callable[[str, int, int], None] | None,
                 reuse: bool | str = True) -> FinalPredictions:
    from lncr.data.entries import unusable_patients

    models = final_models(study.config.output_dir)
    ready = ready_models(study, models)
    folds = Layout(study.config.output_dir).read_final_folds()
    tables, unusable = [], {}
    idle = []  # models with no slide to predict (nobody has that stain with tiles there)
    for m in ready.itertuples():
        unusable[f"{m.stain} {m.magnification}"] = unusable_patients(study, m.stain,
                                                                     m.magnification)
        slides = _model_slides(study, m, folds, device, workers, reuse)
        if slides is None:
            idle.append({"stain": m.stain, "magnification": m.magnification})
            continue
        tables.append(slides)
        if progress:
            progress(f"{m.stain} {m.magnification}: {len(slides)} slides", len(tables) + len(idle),
                     len(ready))
    if not tables:
        raise ValueError("no slide of this study has tiles for any final model: run `lncr "
                         "tile` (tiles/index.csv says why slides failed)")
    return _write_predictions(study, models, pd.concat(tables, ignore_index=True), idle,
                              {k: v for k, v in unusable.items() if v}, folds is not None)


def _write_predictions(study: Study, models: pd.DataFrame, slides: pd.DataFrame,
                       idle: list[dict], unusable: dict[str, list[dict]],
                       out_of_fold: bool = False) -> FinalPredictions:
    """The three prediction tables and ``predictions.json`` from every model's slides
    (``models``: ``final/models.csv``; ``out_of_fold``: k-fold, the development patients
    predicted by their fold models)."""
    from lncr.training.loop import versions

    cfg, ev = study.config, study.config.evaluation
    ready = models[models.status == "done"]
    keys = ["patient_id", "stain", "magnification"]
    single = (slides.groupby(keys, sort=True)
              .agg(probability=("probability", "mean"), slides=("probability", "size"),
                   architecture=("architecture", "first"), bag_size=("bag_size", "first"),
                   run=("run", "first"), epoch=("epoch", "first"))
              .reset_index())
    sides = patient_sides(cfg.output_dir, study.patients, out_of_fold)
    single, per_stain, multi = ensemble_tables(single, sides, cfg)
    folder = cfg.output_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    layout = Layout(cfg.output_dir)
    for kind, table in (("single_models", single), ("stain_ensembles", per_stain),
                        ("multi_stain", multi)):
        write_table(layout.predictions(kind), table)
    missing = (models[models.status != "done"][["stain", "magnification", "error"]]
               .fillna("").to_dict("records"))
    atomic_write_json(layout.predictions_record, {
        "checkpoint": ev.checkpoint, "tiles": ev.tiles,
        "development_patients": ("out of fold: each by the fold model that held it out "
                                 "(final/folds.csv)" if out_of_fold else
                                 "by the final model (only its validation patients are "
                                 "evaluated)"),
        "within_stain": f"{cfg.ensemble.within_stain} over the magnifications present",
        "across_stains": f"{cfg.ensemble.across_stains} over the single-stain ensembles present",
        "models": ready[["stain", "magnification", "architecture", "bag_size", "folder"]]
        .to_dict("records"),
        "missing_models": missing,
        "models_without_slides": idle,
        "patients_without_tiles": unusable,
        **study.source, "versions": versions()})
    return FinalPredictions(folder, single, per_stain, multi, unusable, missing)
