"""The scoring study ``lncr apply`` builds from a bundle: an ordinary lncr study folder whose
patients are all ``prospective`` and whose final models, colour references and settings are
the bundle's, so that tiling, prediction, ensembles and heatmaps run through the very code
that scored the development study::

    <out>/study.yaml                 the bundle's settings; tables below; output lncr-output/
    <out>/inputs/patients.csv        the patients to score (cohort prospective, no label)
    <out>/inputs/slides.csv          their slides (absolute paths)
    <out>/bundle/weights/…           frozen backbones' weights files from the bundle
    <out>/lncr-output/tiles/norm/    the bundle's references, marked fixed (never refitted)
    <out>/lncr-output/final/         models.csv and one run folder per final model

Identifiers become file names only through :func:`lncr.identifiers.file_name`, and bundle
members are extracted by the names the manifest lists, checked as plain relative paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from lncr.bundle.archive import Bundle, BundleError, safe_part
from lncr.fileio import atomic_save_torch, atomic_write_json, atomic_write_text
from lncr.layout import Layout

#: annotations: a QuPath GeoJSON export of the slide (docs/annotations.md), or "".
SLIDE_COLUMNS = ("patient_id", "stain", "path", "mpp", "annotations")


def write_inputs(out: Path, slides: pd.DataFrame) -> tuple[Path, Path]:
    """``inputs/patients.csv`` (every patient of ``slides``, prospective) and
    ``inputs/slides.csv``; returns their paths."""
    folder = out / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(dict.fromkeys(slides.patient_id))
    patients = pd.DataFrame({"patient_id": ids, "cohort": "prospective", "label": ""})
    table = slides.reindex(columns=list(SLIDE_COLUMNS)).astype(object).fillna("")
    return (Path(atomic_write_text(folder / "patients.csv", patients.to_csv(index=False))),
            Path(atomic_write_text(folder / "slides.csv", table.to_csv(index=False))))


def write_study_yaml(out: Path, bundle: Bundle) -> Path:
    """``study.yaml``: the bundle's settings with this folder's tables and output."""
    settings = bundle.json(bundle.manifest["settings"])
    settings.update(patients="inputs/patients.csv", slides="inputs/slides.csv",
                    output_dir="lncr-output")
    settings["sweep"]["weights"] = {}
    header = (f"# Scoring study written by `lncr apply` from bundle {bundle.path.name}\n"
              f"# (sha256 {bundle.sha256}). Its settings are the bundle's: do not edit.\n")
    return Path(atomic_write_text(out / "study.yaml", header + yaml.safe_dump(settings,
                                                                               sort_keys=False)))


def place_references(layout: Layout, bundle: Bundle) -> None:
    """Each stain's reference as a fixed record in ``tiles/norm/`` (tiling reuses it as is)."""
    for stain, part in bundle.manifest["references"].items():
        if part is None:
            continue
        ref = bundle.json(safe_part(part))
        path = layout.norm_reference(stain)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"fixed": True, "reference": ref["reference"],
                                 "method": ref["method"], "digest": ref.get("digest"),
                                 "source": f"bundle {bundle.path.name} ({bundle.sha256})"})


def place_models(out: Path, layout: Layout, bundle: Bundle) -> pd.DataFrame:
    """One run folder per bundled final model (``config.json`` and the checkpoint the study
    predicted with) and ``final/models.csv``; returns that table."""
    from safetensors.torch import load

    rows = []
    for m in bundle.manifest["models"]:
        key = m["key"]
        config = bundle.json(safe_part(f"models/{key}/config.json"))
        if m.get("backbone"):
            weights = bundle.extract(safe_part(m["backbone"]),
                                     out / "bundle" / Path(m["backbone"]))
            config["weights"] = str(weights.resolve())
        folder = layout.final_runs / safe_part(key)
        folder.mkdir(parents=True, exist_ok=True)
        state = load(bundle.read(safe_part(f"models/{key}/model.safetensors")))
        checkpoint, stamp = folder / f"{m['checkpoint']}.pt", folder / "bundle.sha256"
        if not (checkpoint.exists() and stamp.exists() and stamp.read_text() == bundle.sha256):
            # rewritten for another bundle only: an unchanged file lets predictions be reused
            atomic_save_torch({"model": state, "epoch": int(m["epoch"])}, checkpoint)
            atomic_write_text(stamp, bundle.sha256)
        atomic_write_json(folder / "config.json", config)
        rows.append({"stain": m["stain"], "magnification": m["magnification"],
                     "architecture": m["architecture"], "bag_size": m["bag_size"], "seed": 0,
                     "status": "done", "val_auc": float("nan"), "folder": str(folder),
                     "error": ""})
    table = pd.DataFrame(rows)
    layout.write_final_models(table)
    return table


def build_scoring_study(out: Path, bundle: Bundle, slides: pd.DataFrame) -> Path:
    """Write the scoring study for ``slides`` (``patient_id, stain, path[, mpp]``) into
    ``out``; returns its ``study.yaml``."""
    if slides.empty:
        raise BundleError("no slides to score: give --slide STAIN=PATH or --slides TABLE")
    out.mkdir(parents=True, exist_ok=True)
    write_inputs(out, slides)
    study_yaml = write_study_yaml(out, bundle)
    layout = Layout((out / "lncr-output").resolve())
    place_references(layout, bundle)
    place_models(out, layout, bundle)
    atomic_write_json(out / "bundle.json", {
        "bundle": str(bundle.path.resolve()), "sha256": bundle.sha256,
        "manifest": {k: v for k, v in bundle.manifest.items() if k != "parts"}})
    return study_yaml


def bundle_record(out: Path) -> dict:
    return json.loads((out / "bundle.json").read_text())
