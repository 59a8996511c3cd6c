"""The slides a run trains and predicts on: one stain × magnification of a study, with their
development side (``train``/``val``) from the recorded split and their tile stores; and the
patients that cannot be used there, with the reason (no run drops a patient without naming
it)."""

from __future__ import annotations

from lncr.data.bags import SlideEntry, slide_entries
from lncr.errors import BadInput
from lncr.layout import Layout
from lncr.study.validate import Study

OUTCOME = {1: "CR", 0: "non-CR"}


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


def with_sides(entries: list[SlideEntry], sides: dict[str, str] | None) -> list[SlideEntry]:
    """The development slides moved to ``sides`` (patient → train/val: a re-drawn split, a
    fold, every development patient); patients ``sides`` does not name, and external and
    prospective slides, keep theirs. None: unchanged."""
    import dataclasses

    from lncr.study.tables import OUTSIDE_SPLIT

    if sides is None:
        return entries
    return [dataclasses.replace(e, split=sides[e.patient_id])
            if e.split not in OUTSIDE_SPLIT and e.patient_id in sides else e for e in entries]


def side_patients(entries: list[SlideEntry], side: str) -> dict[int, int]:
    """Patients with tiles on ``side`` (``train``/``val``) per label (0 and 1)."""
    seen = {(e.patient_id, e.label) for e in entries if e.split == side}
    return {label: sum(1 for _, lbl in seen if lbl == label) for label in (0, 1)}


def training_problem(entries: list[SlideEntry], minimum: int) -> str:
    """Why a model cannot be trained on these slides ("" when it can): fewer than
    ``minimum`` training patients with tiles of an outcome (``training.min_patients_per_outcome``)."""
    counts = side_patients(entries, "train")
    if not sum(counts.values()):
        return "no development patient with tiles to train on"
    short = [f"{counts[lbl]} {OUTCOME[lbl]}" for lbl in (1, 0) if counts[lbl] < minimum]
    if short:
        return (f"too few training patients with tiles: {' and '.join(short)} (at least "
                f"{minimum} of each outcome, training.min_patients_per_outcome)")
    return ""


def validation_problem(entries: list[SlideEntry]) -> str:
    """Why a model trained on these slides cannot be validated ("" when it can): no
    validation patient with tiles, or all of one outcome (no AUC)."""
    counts = side_patients(entries, "val")
    total = sum(counts.values())
    if not total:
        return "no validation patient has tiles"
    if min(counts.values()) == 0:
        only = OUTCOME[1 if counts[1] else 0]
        return f"the {total} validation patient(s) with tiles are all {only}"
    return ""


def check_sides(entries: list[SlideEntry], unusable: list[dict], where: str,
                minimum: int = 1) -> None:
    """Refuse to train when the training slides hold fewer than ``minimum`` patients of an
    outcome, naming the patients without tiles that caused it (validation slides of one
    outcome are allowed: the run then has no validation AUC)."""
    if not any(e.split == "train" for e in entries):
        raise BadInput(f"{where}: no training slides with tiles (the study has no development "
                       "patients with tiles here); a study of prospective patients only is "
                       "scored with `lncr apply BUNDLE`, not trained")
    problem = training_problem(entries, minimum)
    if problem:
        lost = ", ".join(f"{u['patient_id']} ({u['reason']})" for u in unusable) or "none"
        raise BadInput(
            f"{where}: {problem}; patients without tiles: {lost}. Fix their tiling (lncr "
            "tile), add patients, or lower training.min_patients_per_outcome; a model "
            "trained this way could not learn the outcome")
