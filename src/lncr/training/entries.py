"""The slides a run trains and predicts on: one stain × magnification of a study, with their
development side (``train``/``val``) from the recorded split and their tile stores; and the
patients that cannot be used there, with the reason (no run drops a patient without naming
it)."""

from __future__ import annotations

import pandas as pd

from lncr.errors import BadInput
from lncr.layout import Layout
from lncr.study.validate import Study
from lncr.training.bags import SlideEntry, slide_entries

#: Fewest training slides of each label a run accepts.
MIN_PER_CLASS = 1


def study_entries(study: Study, stain: str, magnification: str) -> list[SlideEntry]:
    """The slides of ``stain`` × ``magnification`` with tiles, from the split that ``lncr
    validate`` recorded and the tile index that ``lncr tile`` wrote."""
    layout = Layout(study.config.output_dir)
    return slide_entries(layout, study.patients, layout.read_split(), stain, magnification)


def unusable_patients(study: Study, stain: str, magnification: str) -> list[dict]:
    """Patients with a ``stain`` slide that has no tiles at ``magnification``: one dict per
    patient (``patient_id``, ``cohort``, ``reason``)."""
    index = Layout(study.config.output_dir).read_tiles_index()
    rows = index[(index.stain == stain) & (index.magnification == magnification)]
    rows = rows.drop_duplicates("patient_id").set_index("patient_id")
    cohort = dict(zip(study.patients.patient_id, study.patients.cohort))
    out = []
    for pid in sorted(set(study.slides[study.slides.stain == stain].patient_id)):
        if pid not in rows.index:
            reason = "not tiled: run `lncr tile`"
        elif rows.loc[pid, "status"] != "ok":
            error = rows.loc[pid, "error"]
            reason = f"tiling {rows.loc[pid, 'status']}" + (
                f": {error}" if isinstance(error, str) and error else "")
        elif int(rows.loc[pid, "kept"]) == 0:
            reason = "no tile kept (too little tissue at this magnification)"
        else:
            continue
        out.append({"patient_id": pid, "cohort": cohort.get(pid, ""), "reason": reason})
    return out


def check_sides(entries: list[SlideEntry], unusable: list[dict], where: str) -> None:
    """Refuse to train when the training slides (or the validation slides, where there are
    any) lack a label, naming the patients without tiles that caused it."""
    if not any(e.split == "train" for e in entries):
        raise BadInput(f"{where}: no training slides with tiles (the study has no development "
                       "patients with tiles here); a study of prospective patients only is "
                       "scored with `lncr apply BUNDLE`, not trained")
    for side in ("train", "val"):
        labels = pd.Series([e.label for e in entries if e.split == side], dtype=int)
        if side == "val" and labels.empty:
            continue
        counts = labels.value_counts()
        short = [lbl for lbl in (0, 1) if counts.get(lbl, 0) < MIN_PER_CLASS]
        if short:
            lost = ", ".join(f"{u['patient_id']} ({u['reason']})" for u in unusable) or "none"
            raise BadInput(
                f"{where}: the {side} slides with tiles hold no patient of label "
                f"{short[0]} ({dict(counts)} by label); patients without tiles: {lost}. "
                "Fix their tiling (lncr tile) or add patients; a model trained this way "
                "could not learn the outcome")
