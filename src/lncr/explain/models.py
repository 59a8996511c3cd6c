"""What every ``lncr explain`` command shares: the final models of a study, their slides, and
each slide's tile scores, computed once and kept on disk.

Tile scores (:mod:`lncr.explain.scores`) are cached as
``<output_dir>/explain/scores/<stain>/<mag>/<patient>.csv`` (written atomically, so a file that
exists is complete); ``heatmap``, ``gradcam`` and ``cluster`` all read that cache first.

Every cached output carries the **key** of what made it — the run, its checkpoint (name, epoch
and SHA-256 of the weights), the tile store, the chunking and, for maps, the method, layer,
target and settings — in ``<marker>.key.json`` beside the file that marks it complete
(:func:`is_fresh`, :func:`stamp`). An output whose key differs (another ``--method``, another
checkpoint, a retrained model, a re-tiled slide) is recomputed, never relabelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lncr.errors import BadInput
from lncr.fileio import atomic_write_json, atomic_write_text, file_sha256
from lncr.layout import Layout
from lncr.paths import stored
from lncr.study.validate import Study


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
    checkpoint: str = "last"
    weights_sha256: str = ""
    threshold: float = 0.5  # validation-fixed threshold of ``lncr evaluate`` (0.5 before)

    @property
    def chunk(self) -> int:
        return int(self.config["settings"]["eval_tiles"])

    @property
    def crop(self) -> int:
        return int(self.config["geometry"]["crop"])

    @property
    def input_size(self) -> int:
        return int(self.config["geometry"]["size"])

    def key(self, entry=None, **extra) -> dict:
        """What an output of this model (and of ``entry``'s slide) depends on."""
        key = {"run": stored(self.folder, self.cfg.output_dir), "checkpoint": self.checkpoint,
               "epoch": self.epoch, "weights_sha256": self.weights_sha256, "crop": self.crop,
               "chunk": self.chunk, "input_size": self.input_size}
        if entry is not None:
            store = Path(entry.store)
            stat = store.stat() if store.exists() else None
            key["store"] = {"path": stored(store, self.cfg.output_dir),
                            "bytes": stat.st_size if stat else None,
                            "mtime_ns": stat.st_mtime_ns if stat else None,
                            "tiles": int(entry.n_tiles)}
        return {**key, **extra}

    def outcome(self, probability: float) -> int:
        """The outcome explained for a slide (``explain.target``): 1 = CR, 0 = non-CR."""
        from lncr.explain.gradcam import resolve_target

        return resolve_target(self.cfg.explain.target, probability, self.threshold)

    def scores_path(self, patient_id: str) -> Path:
        return Layout(self.cfg.output_dir).explain_file("scores", self.stain,
                                                        self.magnification, patient_id, ".csv")


def _key_file(marker: Path) -> Path:
    return marker.with_name(marker.name + ".key.json")


def is_fresh(marker: Path, key: dict) -> bool:
    """True when ``marker`` (the file that marks an output complete) exists and was made with
    exactly ``key``."""
    keyfile = _key_file(marker)
    if not (marker.exists() and keyfile.exists()):
        return False
    try:
        return json.loads(keyfile.read_text()) == json.loads(json.dumps(key))
    except ValueError:
        return False


def stamp(marker: Path, key: dict) -> None:
    """Record ``key`` for the complete output marked by ``marker`` (write the marker first)."""
    atomic_write_json(_key_file(marker), key)


def validation_column(out: Path, column: str) -> dict[str, float]:
    """One column of ``lncr evaluate``'s ``metrics.csv`` on the validation cohort, per model
    (``"HE 20x"``, ``"HE"``, ensemble); empty before evaluation."""
    metrics = Layout(out).read_metrics()
    if metrics is None:
        return {}
    val = metrics[metrics.cohort == "validation"]
    return dict(zip(val.model, val[column].astype(float)))


def model_thresholds(out: Path) -> dict[str, float]:
    """Each evaluated model's validation-fixed threshold."""
    return validation_column(out, "threshold")


def final_models_for(study: Study, cohort: str = "all", patients: list[str] | None = None,
                     device: str = "auto", stains: list[str] | None = None,
                     magnifications: list[str] | None = None,
                     thresholds: dict[str, float] | None = None) -> Iterator[FinalModel]:
    """Each finished final model (optionally only some stains/magnifications), loaded with the
    checkpoint ``evaluation.checkpoint``, with the slides of ``cohort``/``patients``.
    ``thresholds`` (model → threshold) replaces those of the study's own evaluation (a
    bundle's, in ``lncr apply``)."""
    from lncr.data.entries import study_entries
    from lncr.training.predict import load_run, select

    cfg = study.config
    models = Layout(cfg.output_dir).read_single_final_models("explaining a prediction")
    if stains:
        models = models[models.stain.isin(stains)]
    if magnifications:
        models = models[models.magnification.isin(magnifications)]
    if models.empty:
        raise ValueError("no finished final model matches: check --stain/--magnification and "
                         "that `lncr sweep` trained the final models")
    wanted = set(patients) if patients else None
    thresholds = model_thresholds(cfg.output_dir) if thresholds is None else thresholds
    for m in models.itertuples():
        entries = study_entries(study, m.stain, m.magnification)
        checkpoint = cfg.evaluation.checkpoint
        model, config, inputs, epoch = load_run(m.folder, checkpoint, device)
        chosen = [e for e in select(entries, cohort)
                  if wanted is None or e.patient_id in wanted]
        yield FinalModel(m.stain, m.magnification, m.folder, model, config, inputs, epoch,
                         chosen, cfg, checkpoint,
                         file_sha256(Path(m.folder) / f"{checkpoint}.pt"),
                         thresholds.get(f"{m.stain} {m.magnification}", 0.5))


class NotExplainedYet(BadInput):
    """A slide's tile scores were asked for from the cache only, and it has none."""


def cached_scores(fm: FinalModel, entry, compute: bool = True) -> tuple[pd.DataFrame, float]:
    """The slide's tile scores and probability, from the cache or (``compute``) computed and
    cached; without ``compute`` a missing cache raises :class:`NotExplainedYet`."""
    from lncr.explain.scores import slide_scores

    path = fm.scores_path(entry.patient_id)
    key = fm.key(entry)
    if is_fresh(path, key):
        scores = pd.read_csv(path)
        return scores, float(scores.groupby("chunk").chunk_probability.first().mean())
    if not compute:
        raise NotExplainedYet(f"{fm.stain} {fm.magnification} of patient {entry.patient_id} "
                              "has not been scored yet")
    scores, probability = slide_scores(fm.model, fm.inputs, entry, fm.crop, fm.chunk,
                                       features_of(fm, entry))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, scores.to_csv(index=False))
    stamp(path, key)
    return scores, probability


def features_of(fm: FinalModel, entry) -> Path | None:
    """The slide's cached features when the model was trained on them (embedded now if
    needed), else None."""
    from lncr.features.embed import FeatureCache, embed_entries
    from lncr.features.spec import spec_from_config

    spec = spec_from_config(fm.config)
    if spec is None:
        return None
    cache = FeatureCache(Layout(fm.cfg.output_dir), fm.cfg.embedding)
    embed_entries(cache, spec, [entry], fm.inputs.device)
    return cache.path(spec, entry)


def slide_paths(output_dir: Path) -> dict[tuple[str, str], str]:
    """(patient, stain) → slide file, from the tile index."""
    index = Layout(output_dir).read_tiles_index()
    return {(r.patient_id, r.stain): r.slide for r in index.itertuples()}
