"""``lncr export STUDY.yaml OUT.lncr``: the study's final ensemble as one portable bundle.

The bundle (:mod:`lncr.bundle.archive`) holds everything ``lncr apply`` needs to score a new
patient exactly as ``lncr predict`` scores the study's own patients:

- ``study/settings.json`` — the effective settings (tiling, magnifications, training,
  embedding, ensembles, evaluation), without the study's paths;
- ``models/<stain>-<mag>/config.json`` and ``model.safetensors`` — each finished final model's
  run record (architecture, geometry, channel statistics, feature spec) and its weights at
  ``evaluation.checkpoint``; a model trained on cached features keeps its trained head, and
  its frozen backbone's weights file travels once as ``weights/<sha256>.<ext>``;
- ``references/<stain>.json`` — each stain's colour-normalisation reference, fitted on
  development slides (never refitted on new slides);
- ``results/thresholds.json`` — per model and ensemble, the threshold fixed on the validation
  patients and the sensitivity, specificity, PPV, NPV and accuracy it had there and on the
  external cohort; ``results/metrics.csv``, ``results/threshold_metrics.csv`` and
  ``results/selection.json`` — the study's headline results and selection.

No patient identifier, slide path or split leaves the study: the references drop the tiles
they were fitted on and the run records drop their study path and excluded patients.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from lncr.bundle.archive import write_bundle
from lncr.errors import BadInput
from lncr.fileio import file_sha256, read_torch
from lncr.identifiers import file_name
from lncr.layout import Layout
from lncr.locks import locks_output
from lncr.study.config import config_to_dict
from lncr.study.validate import Study
from lncr.training.predict import retrain_fix

#: Operating characteristics carried per model and cohort (``lncr evaluate``'s metrics).
OPERATING = ("sensitivity", "specificity", "ppv", "npv", "accuracy")
#: Run-record fields that name the study's files or patients: never exported.
PRIVATE_RUN_FIELDS = ("source", "patients_without_tiles")


class ExportError(BadInput):
    """The study has nothing complete to export yet."""


def model_key(stain: str, magnification: str) -> str:
    return f"{file_name(stain)}-{magnification}"


def _safetensors(state: dict) -> bytes:
    from safetensors.torch import save

    # contiguous copies: safetensors refuses tensors that share memory
    return save({k: v.detach().contiguous().clone() for k, v in state.items()})


def _model_parts(row, checkpoint: str, parts: dict[str, bytes]) -> dict:
    """Add one final model's record and weights to ``parts``; its manifest entry."""

    from lncr.features.spec import spec_from_config
    from lncr.training.predict import load_run

    folder = Path(row.folder)
    config = json.loads((folder / "config.json").read_text())
    spec = spec_from_config(config)  # refuses missing or changed backbone weights
    state = read_torch(folder / f"{checkpoint}.pt", fix=retrain_fix(folder))
    key = model_key(row.stain, row.magnification)
    entry = {"key": key, "stain": row.stain, "magnification": row.magnification,
             "architecture": row.architecture, "bag_size": int(row.bag_size),
             "epoch": int(state["epoch"]), "checkpoint": checkpoint, "backbone": None}
    weights = state["model"]
    if spec is not None and spec.weights != "imagenet":  # head + its backbone file, once
        source = Path(spec.weights)
        part = f"weights/{file_sha256(source)}{source.suffix}"
        parts.setdefault(part, source.read_bytes())
        entry["backbone"] = part
    elif spec is not None:  # library weights may be absent where the bundle goes: full model
        model = load_run(folder, checkpoint, "cpu", backbone=True)[0]
        weights = model.state_dict()
        config = {**config, "features": None, "weights": None}
        entry["note"] = ("trained on cached features of library ImageNet weights: exported as "
                         "the full model, scored on pixels (agrees with the cached route to "
                         "float rounding)")
    config = {k: v for k, v in config.items() if k not in PRIVATE_RUN_FIELDS}
    if config.get("weights") not in (None, "imagenet"):  # a path of the study's machine
        config["weights"] = Path(config["weights"]).name
    parts[f"models/{key}/config.json"] = json.dumps(config, indent=2, sort_keys=True).encode()
    parts[f"models/{key}/model.safetensors"] = _safetensors(weights)
    return entry


def _references(layout: Layout, stains, cfg, parts: dict[str, bytes]) -> dict:
    out = {}
    for stain in stains:
        method = cfg.tiling.method_for(stain)
        if method == "none":
            out[stain] = None
            continue
        path = layout.norm_reference(stain)
        if not path.exists():
            raise ExportError(f"{path} is missing: run `lncr tile STUDY.yaml` first")
        record = json.loads(path.read_text())
        part = f"references/{file_name(stain)}.json"
        parts[part] = json.dumps({"stain": stain, "method": method,
                                  "reference": record["reference"],
                                  "digest": record.get("digest")}, indent=2,
                                 sort_keys=True).encode()
        out[stain] = part
    return out


def operating_points(metrics: pd.DataFrame, threshold_rows: pd.DataFrame) -> dict:
    """Per model (``HE 10x``, ``HE``, ``multi-stain``): the validation-fixed threshold, its
    source and, per cohort, AUC and the metrics at that threshold with their CIs."""
    out: dict = {}
    val = metrics[metrics.cohort == "validation"]
    for r in val.itertuples():
        cohorts = {}
        for cohort in ("validation", "external"):
            m = metrics[(metrics.cohort == cohort) & (metrics.model == r.model)]
            t = threshold_rows[(threshold_rows.cohort == cohort)
                               & (threshold_rows.model == r.model)]
            if m.empty:
                continue
            cohorts[cohort] = {
                "patients": int(m.patients.iloc[0]),
                "auc": _num(m.auc.iloc[0]), "auc_ci": [_num(m.delong_ci_low.iloc[0]),
                                                       _num(m.delong_ci_high.iloc[0])],
                **{x.metric: {"value": _num(x.value), "ci": [_num(x.ci_low), _num(x.ci_high)],
                              "successes": int(x.successes), "total": int(x.total)}
                   for x in t.itertuples() if x.metric in OPERATING}}
        out[r.model] = {"threshold": float(r.threshold), "source": r.threshold_source,
                        "kind": r.kind, "cohorts": cohorts}
    return out


def _num(value) -> float | None:
    value = float(value)
    return value if value == value else None


def _results(layout: Layout, parts: dict[str, bytes]) -> dict:
    metrics = layout.read_metrics()
    thresholds_path = layout.evaluation_table("threshold_metrics")
    if metrics is None or not thresholds_path.exists():
        raise ExportError(f"{layout.metrics} is missing: run `lncr predict` and `lncr evaluate` "
                          "first (the bundle carries the development threshold and the "
                          "study's results)")
    from lncr.layout import read_table

    points = operating_points(metrics, read_table(thresholds_path))
    parts["results/thresholds.json"] = json.dumps(points, indent=2, sort_keys=True).encode()
    parts["results/metrics.csv"] = layout.metrics.read_bytes()
    parts["results/threshold_metrics.csv"] = thresholds_path.read_bytes()
    if layout.selection.exists():  # without the study's path and command-line overrides
        selection = json.loads(layout.selection.read_text())
        for key in ("study", "overrides"):
            selection.pop(key, None)
        parts["results/selection.json"] = json.dumps(selection, indent=2,
                                                     sort_keys=True).encode()
    return points


def _settings(cfg) -> dict:
    """The effective settings without the study's paths (they mean nothing elsewhere)."""
    settings = config_to_dict(cfg)
    for key in ("patients", "slides", "output_dir"):
        settings.pop(key, None)
    settings["tiling"]["reference_images"] = {}  # the fitted references travel instead
    settings["sweep"]["weights"] = {}
    return settings


@locks_output
def export_bundle(study: Study, out: Path) -> Path:
    """Write the study's final ensemble to the bundle ``out`` (see the module docstring)."""
    from lncr.provenance import training_versions

    cfg = study.config
    layout = Layout(cfg.output_dir)
    models = layout.read_final_models()
    ready = layout.read_single_final_models("a bundle")
    if ready.empty:
        raise ExportError(f"no finished final model in {layout.final_models}: run `lncr sweep` "
                          "first")
    parts: dict[str, bytes] = {}
    checkpoint = cfg.evaluation.checkpoint
    entries = [_model_parts(r, checkpoint, parts) for r in ready.itertuples()]
    points = _results(layout, parts)
    parts["study/settings.json"] = json.dumps(_settings(cfg), indent=2,
                                              sort_keys=True).encode()
    newest = max(Path(r.folder, f"{checkpoint}.pt").stat().st_mtime for r in ready.itertuples())
    content = {
        "study": cfg.name, "trained": datetime.fromtimestamp(newest, timezone.utc)
        .strftime("%Y-%m-%d"),
        "models": entries,
        "missing_models": models[models.status != "done"][["stain", "magnification"]]
        .to_dict("records"),
        "stains": list(cfg.stains), "magnifications": list(cfg.magnification_labels()),
        "references": _references(layout, cfg.stains, cfg, parts),
        "settings": "study/settings.json", "thresholds": "results/thresholds.json",
        "ensemble": {"within_stain": cfg.ensemble.within_stain,
                     "across_stains": cfg.ensemble.across_stains},
        "threshold_rule": cfg.evaluation.threshold,
        "headline": {c: v for c, v in points.get("multi-stain", {}).get("cohorts", {}).items()},
        "intended_use": "research use only: not a medical device; scores need local "
                        "validation before any clinical use",
        "versions": training_versions()}
    return write_bundle(out, parts, content)

