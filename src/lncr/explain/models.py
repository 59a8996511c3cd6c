"""What every ``lncr explain`` command shares: the final models of a study, their slides, and
each slide's tile scores, computed once and kept on disk.

Tile scores (:mod:`lncr.explain.scores`) are cached as
``<output_dir>/explain/scores/<stain>/<mag>/<patient>.csv`` (written atomically, so a file that
exists is complete); ``heatmap``, ``gradcam`` and ``cluster`` all read that cache first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lncr.fileio import atomic_write_text


@dataclass
class FinalModel:
    """One loaded final model with the slides it explains."""

    stain: str
    magnification: str
    folder: str
    model: object  # AttentionMIL
    config: dict
    inputs: object  # DeviceInput
    epoch: int
    entries: list  # SlideEntry of the chosen patients
    cfg: object  # StudyConfig

    @property
    def chunk(self) -> int:
        return int(self.config["settings"]["eval_tiles"])

    @property
    def crop(self) -> int:
        return int(self.config["geometry"]["crop"])

    @property
    def input_size(self) -> int:
        return int(self.config["geometry"]["size"])

    def scores_path(self, patient_id: str) -> Path:
        return (self.cfg.output_dir / "explain" / "scores" / self.stain / self.magnification
                / f"{patient_id}.csv")


def output_dir(study_yaml: str | Path, overrides: list[str] | None) -> Path:
    from lncr.study.config import load_config

    return load_config(study_yaml, list(overrides or [])).output_dir


def final_models_for(study_yaml: str | Path, overrides: list[str] | None = None,
                     cohort: str = "all", patients: list[str] | None = None,
                     device: str = "auto", stains: list[str] | None = None,
                     magnifications: list[str] | None = None) -> Iterator[FinalModel]:
    """Each finished final model (optionally only some stains/magnifications), loaded with the
    checkpoint ``evaluation.checkpoint``, with the slides of ``cohort``/``patients``."""
    from lncr.evaluation.final_predictions import final_models
    from lncr.training.loop import study_entries
    from lncr.training.predict import load_run, select

    overrides = list(overrides or [])
    models = final_models(output_dir(study_yaml, overrides))
    models = models[models.status == "done"]
    if stains:
        models = models[models.stain.isin(stains)]
    if magnifications:
        models = models[models.magnification.isin(magnifications)]
    if models.empty:
        raise ValueError("no finished final model matches: check --stain/--magnification and "
                         "that `lncr sweep` trained the final models")
    wanted = set(patients) if patients else None
    for m in models.itertuples():
        cfg, entries = study_entries(study_yaml, m.stain, m.magnification, overrides)
        model, config, inputs, epoch = load_run(m.folder, cfg.evaluation.checkpoint, device)
        chosen = [e for e in select(entries, cohort)
                  if wanted is None or e.patient_id in wanted]
        yield FinalModel(m.stain, m.magnification, m.folder, model, config, inputs, epoch,
                         chosen, cfg)


def cached_scores(fm: FinalModel, entry) -> tuple[pd.DataFrame, float]:
    """The slide's tile scores and probability, from the cache or computed and cached."""
    from lncr.explain.scores import slide_scores

    path = fm.scores_path(entry.patient_id)
    if path.exists():
        scores = pd.read_csv(path)
        return scores, float(scores.groupby("chunk").chunk_probability.first().mean())
    scores, probability = slide_scores(fm.model, fm.inputs, entry, fm.crop, fm.chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, scores.to_csv(index=False))
    return scores, probability


def slide_paths(output_dir: Path) -> dict[tuple[str, str], str]:
    """(patient, stain) → slide file, from the tile index."""
    index = pd.read_csv(output_dir / "tiles" / "index.csv", dtype={"patient_id": str})
    return {(r.patient_id, r.stain): r.slide for r in index.itertuples()}
