"""Apply a trained run to a cohort: one probability of complete response per slide.

``tiles="eval"`` predicts on the evaluation set of each slide (up to ``eval_tiles`` tiles
spread evenly over the store — what validation used during training). ``tiles="all"`` uses
every tile: a slide's ``n`` tiles are dealt into ``k = ceil(n / chunk_size)`` interleaved
chunks (chunk ``c`` holds tiles ``c, c+k, c+2k, …``, so each chunk spreads over the whole
slide like an evaluation bag), each chunk is one bag through the model, and the slide's
probability is the mean of its chunks' probabilities. Chunks bound memory (the transformer
is quadratic in the bag length) and keep bags the size the model saw in validation.

Predictions are written to ``<run>/predictions/<cohort>-<checkpoint>-<tiles>.csv`` with a
``.json`` record of the settings and versions; the same inputs give the same file on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lncr.data.bags import BagDataset, SlideEntry, chunk_count
from lncr.data.distributed import Context, resolve_device
from lncr.data.entries import study_entries, with_sides
from lncr.data.inputs import DeviceInput, InputGeometry
from lncr.errors import BadInput
from lncr.features.spec import spec_from_config
from lncr.fileio import atomic_write_json, atomic_write_text, read_torch
from lncr.layout import read_table
from lncr.models.mil import load_head_state, with_backbone_keys
from lncr.study.config import TrainingSettings
from lncr.study.tables import OUTSIDE_SPLIT
from lncr.study.validate import Study
from lncr.training.loop import build_model, evaluate, loader, versions

#: development: every development patient; val: those the run held out (its split.csv);
#: outside: external and prospective patients.
COHORTS = ("development", "train", "val", "external", "prospective", "outside", "all")
CHECKPOINTS = ("best", "last")
TILE_CHOICES = ("eval", "all")


def prediction_path(folder: str | Path, cohort: str, checkpoint: str, tiles: str) -> Path:
    """Where :func:`predict_run` writes its table (the ``.json`` record sits beside it)."""
    return Path(folder) / "predictions" / f"{cohort}-{checkpoint}-{tiles}.csv"


def load_run(folder: str | Path, checkpoint: str = "best", device: str = "cpu",
             backbone: bool = True):
    """The model of a run's checkpoint (``best`` or ``last``), its config and input pipeline.
    A run trained on cached features gets its backbone rebuilt from the pretrained weights,
    unless ``backbone`` is False: then the model is the trained head alone, for features."""
    folder = Path(folder)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint {checkpoint!r}: use best or last")
    path = folder / f"{checkpoint}.pt"
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder} is not a run folder (no config.json): give a folder under "
                         "<output_dir>/runs/<stain>/<mag>/")
    if not path.exists():
        raise ValueError(f"{path} does not exist: the run has not finished an epoch yet "
                         "(train it first, or use --checkpoint last)")
    dev = resolve_device(device)
    state = read_torch(path, dev, retrain_fix(folder))
    config = json.loads((folder / "config.json").read_text())
    settings = TrainingSettings(**config["settings"])
    spec = spec_from_config(config)  # cached features: the backbone from its weights
    if spec is not None and not backbone:  # the head alone, as trained
        model = build_model(settings, features=int(config["features"]["dim"])).to(dev)
        model.load_state_dict(state["model"])
    elif spec is not None:  # a head trained on cached features, into the full model
        model = build_model(settings, weights=spec.weights).to(dev)
        load_head_state(model, with_backbone_keys(model, state["model"]))
    else:
        model = build_model(settings).to(dev)
        model.load_state_dict(state["model"])
    model.eval()
    inputs = DeviceInput(InputGeometry(**config["geometry"]), config["channel_mean"],
                         config["channel_std"], dev)
    return model, config, inputs, int(state["epoch"])


def retrain_fix(folder: Path) -> str:
    """How to rebuild a run whose checkpoint is damaged."""
    return (f"delete the run folder {folder} and run `lncr sweep STUDY.yaml` again (it trains "
            "that unit or final model anew), or `lncr train … --force` for a run of your own")


def select(entries: list[SlideEntry], cohort: str) -> list[SlideEntry]:
    if cohort not in COHORTS:
        raise ValueError(f"--cohort {cohort!r}: use one of {', '.join(COHORTS)}")
    if cohort == "development":
        return [e for e in entries if e.split in ("train", "val")]
    if cohort in ("train", "val"):
        return [e for e in entries if e.split == cohort]
    if cohort == "outside":
        return [e for e in entries if e.split in OUTSIDE_SPLIT]
    if cohort in OUTSIDE_SPLIT:
        return [e for e in entries if e.split == cohort]
    return list(entries)


def run_sides(folder: Path, entries: list[SlideEntry]) -> list[SlideEntry]:
    """The development slides on the sides the run trained with (its ``split.csv``: a
    re-drawn split, a fold, or every development patient); slides it did not see keep the
    study's side."""
    path = Path(folder) / "split.csv"
    if not path.exists():
        return entries
    table = read_table(path)
    return with_sides(entries, dict(zip(table.patient_id, table.split)))


def inputs_fingerprint(entries: list[SlideEntry]) -> str:
    """A digest of the slides a prediction covers: patient, stain, magnification, label, side,
    tile count and the tile store's modification time (a re-tiled slide changes it)."""
    rows = [[e.patient_id, e.stain, e.magnification, e.label, e.split, int(e.n_tiles),
             str(e.store), Path(e.store).stat().st_mtime_ns if Path(e.store).exists() else 0]
            for e in entries]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


class NotPredictedYet(BadInput):
    """A model's predictions were asked for without predicting, and it has none."""


def _earlier_prediction(folder: Path, cohort: str, checkpoint: str, tiles: str, chunk: int,
                        fingerprint: str) -> pd.DataFrame | None:
    out = prediction_path(folder, cohort, checkpoint, tiles)
    record_path = out.with_suffix(".json")  # written after the CSV: a record means it is whole
    if not (out.exists() and record_path.exists()):
        return None
    record = json.loads(record_path.read_text())
    same = (record.get("inputs") == fingerprint
            and (tiles == "eval" or record.get("chunk_size") == chunk)
            and (folder / f"{checkpoint}.pt").stat().st_mtime_ns
            <= record_path.stat().st_mtime_ns)
    return read_table(out) if same else None


def cached_inputs(study: Study, spec, entries: list[SlideEntry], model, settings,
                  device: torch.device):
    """The feature-side model, input and dataset of a run trained on cached features (the
    slides are embedded first when their features are missing)."""
    from lncr.features.bags import FeatureBagDataset, FeatureInput
    from lncr.features.embed import FeatureCache, embed_entries
    from lncr.layout import Layout
    from lncr.models.mil import FeatureModel

    cache = FeatureCache(Layout(study.config.output_dir), study.config.embedding)
    embed_entries(cache, spec, entries, device)
    dataset = FeatureBagDataset(entries, [cache.path(spec, e) for e in entries], 1,
                                train=False, eval_tiles=settings.eval_tiles)
    return FeatureModel(model).eval(), FeatureInput(device), dataset


def run_study(folder: Path, config: dict, study: Study | str | Path | None,
              overrides: list[str] | None) -> Study:
    """The study a run predicts on: ``study`` itself, or the file given or recorded by the
    run (relative to the run folder, :mod:`lncr.paths`) loaded with the run's overrides, then
    the caller's."""
    if isinstance(study, Study):
        return study
    source = config.get("source") or {}
    recorded = source.get("study")
    if study is None and recorded:
        study = (recorded if Path(recorded).is_absolute()
                 else os.path.normpath(Path(folder).absolute() / recorded))
    if study is None:
        raise BadInput(f"{folder} does not record its study; give the study file (--study)")
    return Study.load(study, list(source.get("overrides") or []) + list(overrides or []))


def predict_run(folder: str | Path, cohort: str = "all", checkpoint: str = "last",
                tiles: str = "eval", chunk_size: int | None = None,
                study: Study | str | Path | None = None,
                overrides: list[str] | None = None, device: str = "cpu", workers: int = 0,
                write: bool = True, reuse: bool | str = False,
                features: bool | None = None) -> pd.DataFrame:
    """One row per slide of ``cohort``: patient, stain, magnification, cohort, split, label,
    probability, tiles used, chunks, run, checkpoint, epoch.

    With ``reuse``, an earlier prediction file is returned instead when its record shows the
    same checkpoint (not rewritten since), tile choice, chunk size and inputs — the same
    slides with the same labels, sides and tile stores (:func:`inputs_fingerprint`); with
    ``reuse="only"`` its absence raises :class:`NotPredictedYet` instead of predicting.

    A run trained on cached features predicts from them (``features=None``; the slides are
    embedded first when needed); ``features=False`` runs its backbone on the tiles instead,
    which gives the same probabilities (to float rounding)."""
    folder = Path(folder)
    if tiles not in TILE_CHOICES:
        raise ValueError(f"--tiles {tiles!r}: use eval or all")
    # from cached features the backbone is not needed (only to embed missing slides)
    model, config, inputs, epoch = load_run(folder, checkpoint, device,
                                            backbone=features is False)
    settings = TrainingSettings(**config["settings"])
    study = run_study(folder, config, study, overrides)
    spec = config["spec"]
    entries = run_sides(folder, study_entries(study, spec["stain"], spec["magnification"]))
    entries = select(entries, cohort)
    if not entries:
        raise ValueError(f"no {cohort} slides with {spec['stain']} {spec['magnification']} "
                         "tiles in this study")
    crop = config["geometry"]["crop"]
    chunk = chunk_size or settings.eval_tiles
    fingerprint = inputs_fingerprint(entries)
    if reuse:
        earlier = _earlier_prediction(folder, cohort, checkpoint, tiles, chunk, fingerprint)
        if earlier is not None:
            return earlier
        if reuse == "only":
            raise NotPredictedYet(f"{spec['stain']} {spec['magnification']} ({folder.name}) "
                                  "has no prediction of these slides yet")
    ctx = Context(device=inputs.device)
    ds = BagDataset(entries, 1, train=False, eval_tiles=settings.eval_tiles, crop=crop)
    spec = spec_from_config(config) if features is not False else None
    if spec is not None:
        model, inputs, ds = cached_inputs(study, spec, entries, model, settings, inputs.device)
    keys, used, n_chunks = prediction_bags(entries, tiles, chunk, settings.eval_tiles)
    probs: dict[int, list[float]] = {}  # the chunks of a slide are averaged
    for slide, p, _ in evaluate(model, loader(ds, keys, 1, workers, inputs.device), inputs,
                                ctx, None):
        probs.setdefault(slide, []).append(p)
    rows = [{"patient_id": e.patient_id, "stain": e.stain, "magnification": e.magnification,
             "cohort": e.split if e.split in OUTSIDE_SPLIT else "development",
             "split": e.split, "label": e.label,
             "probability": float(np.mean(probs[i])), "tiles_used": used[i],
             "chunks": n_chunks[i], "run": folder.name, "checkpoint": checkpoint,
             "epoch": epoch} for i, e in enumerate(entries)]
    table = pd.DataFrame(rows)
    if write:
        out = prediction_path(folder, cohort, checkpoint, tiles)
        out.parent.mkdir(exist_ok=True)
        atomic_write_text(out, table.to_csv(index=False))
        atomic_write_json(out.with_suffix(".json"), {  # after the CSV: it marks it whole
            "run": str(folder), "cohort": cohort, "checkpoint": checkpoint, "epoch": epoch,
            "tiles": tiles, "chunk_size": chunk if tiles == "all" else None,
            "eval_tiles": settings.eval_tiles, **study.source, "inputs": fingerprint,
            "features": spec.feature_id() if spec is not None else None,
            "versions": versions()})
    return table


def prediction_bags(entries: list[SlideEntry], tiles: str, chunk: int, eval_tiles: int
                    ) -> tuple[list, list[int], list[int]]:
    """The dataset keys of a prediction, the tiles each slide uses and its chunks: one
    evaluation bag per slide (``eval``), or every tile in interleaved chunks (``all``)."""
    if tiles == "eval":
        return (list(range(len(entries))), [min(e.n_tiles, eval_tiles) for e in entries],
                [1] * len(entries))
    n_chunks = [chunk_count(e.n_tiles, chunk) for e in entries]
    keys = [(i, c, k) for i, k in enumerate(n_chunks) for c in range(k)]
    return keys, [e.n_tiles for e in entries], n_chunks
