"""``lncr synth``: write a complete phantom study whose ground truth is known.

Output folder::

    OUT/
      study.yaml            the study (names the two tables, every setting at its default)
      patients.csv          patient_id, cohort, label
      slides.csv            patient_id, stain, path
      slides/<patient>_<stain>.tiff       pyramidal JPEG TIFF, 0.25 µm/px at level 0
      masks/<patient>_<stain>.png         lesion label map (codes in truth.json)
      thumbnails/<patient>_<stain>.png    RGB overview
      synth.json            the generator settings (written first: a re-run resumes)
      truth.json            every patient's lesion burden and label, per-slide lesion counts

Two anatomies: ``band`` (default) fills most of a small canvas (``--size``) with one
band-shaped core — cheap, for tests and the demo; ``biopsy`` lays 1–3 needle cores of
true size (about 1 × 5–15 mm) on glass, the canvas sized to hold them
(:mod:`lncr.synth.biopsy`), so that the published 512-px tiles give the tile counts of real
renal biopsies. With ``missing_stains``, some patients lack some stains (their slides are
neither rendered nor listed).

The label is planted probabilistically: a latent lesion burden in [0, 1] is drawn from a Beta
distribution whose mean is higher for patients without complete response (label 0) by
``0.25 * signal``. Burden sets the chance that a glomerulus carries a lesion (crescent,
segmental or global sclerosis, wire-loop capillary walls) and the extent of interstitial
fibrosis with inflammation, so some responders have lesions and not every glomerulus of a
non-responder is lesioned.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lncr import __version__
from lncr.errors import BadInput
from lncr.fileio import atomic_write_json, atomic_write_text, partial_path
from lncr.synth.biopsy import BiopsyAnatomy, draw_cores
from lncr.synth.geometry import GLOMERULAR_LESIONS, make_patient_geometry, section_of
from lncr.synth.pyramid import thumbnail, write_pyramid_strips
from lncr.synth.render import MASK_CODES, SectionRenderer
from lncr.synth.stains import (
    COMPARTMENTS,
    DEVELOPMENT_STYLE,
    DYES,
    EXTERNAL_STYLE,
    RECIPES,
    CohortStyle,
    compartment_od,
)
from lncr.workers import process_pool

#: Named canvas sizes in µm (width, height) of level 0.
SIZES: dict[str, tuple[float, float]] = {
    "small": (800.0, 480.0),  # tests: 3200 × 1920 px, a few glomeruli
    "demo": (2600.0, 1040.0),  # demo: 10400 × 4160 px; two rows of 10x 512-px tiles (512 µm)
}
DEFAULT_STAINS: tuple[str, ...] = ("HE", "PAS", "PASM", "MASSON")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[x×X]\s*(\d+)\s*$")


class SynthError(BadInput):
    """The phantom cannot be written as asked."""


def parse_size(size: str, mpp: float = 0.25) -> tuple[float, float]:
    """``small``, ``demo`` or ``W×H`` (level-0 pixels) → canvas size in µm."""
    if size in SIZES:
        return SIZES[size]
    m = _SIZE_RE.match(size)
    if not m:
        raise SynthError(f"--size {size!r} is not understood: use small, demo or WIDTHxHEIGHT "
                         "in level-0 pixels (e.g. 4096x2048)")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 1024 or h < 512 or w * h > 400e6:
        raise SynthError(f"--size {size!r}: width must be ≥ 1024, height ≥ 512 and the slide at "
                         "most 400 Mpx")
    return w * mpp, h * mpp


def parse_range(text: str, option: str) -> tuple[float, float]:
    """``A`` or ``A-B`` (numbers) → (A, B)."""
    parts = [p.strip() for p in str(text).split("-")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or (len(values) == 2 and values[0] > values[1]):
        raise SynthError(f"{option} {text!r}: give a number or a range MIN-MAX, e.g. 5-15")
    return values[0], values[-1]


@dataclass(frozen=True)
class SynthSettings:
    """Everything that determines the phantom; equal settings give byte-identical files."""

    patients: int = 8
    external: int = 4
    seed: int = 0
    size: str = "small"
    signal: float = 1.0
    permute_labels: bool = False
    stains: tuple[str, ...] = DEFAULT_STAINS
    mpp: float = 0.25
    mask_downsample: int = 16
    thumbnail_downsample: int = 32
    anatomy: str = "band"  # band: one core filling the canvas; biopsy: needle cores on glass
    cores: tuple[int, int] = (1, 3)  # biopsy: cores per slide (a range)
    core_length_mm: tuple[float, float] = (5.0, 15.0)  # biopsy: each core's length
    core_width_mm: tuple[float, float] = (0.8, 1.2)  # biopsy: each core's width
    missing_stains: float = 0.0  # chance that a patient lacks a stain (one stain always kept)

    def __post_init__(self) -> None:
        if self.patients < 2:
            raise SynthError("--patients must be at least 2 (one of each label)")
        if self.external < 0:
            raise SynthError("--external cannot be negative")
        if not 0.0 <= self.signal <= 1.9:
            raise SynthError(f"--signal {self.signal} is outside [0, 1.9] (0 = no link between "
                             "lesions and outcome, 1 = default)")
        unknown = [s for s in self.stains if s not in RECIPES]
        if unknown:
            raise SynthError(f"no phantom recipe for stain(s) {unknown}; known: {sorted(RECIPES)}")
        for d in (self.mask_downsample, self.thumbnail_downsample):
            if d < 2 or d & (d - 1):
                raise SynthError(f"downsample {d} must be a power of two, at least 2")
        parse_size(self.size, self.mpp)
        if self.anatomy not in ("band", "biopsy"):
            raise SynthError(f"--anatomy {self.anatomy!r}: use band or biopsy")
        if not 0.0 <= self.missing_stains < 1.0:
            raise SynthError(f"--missing-stains {self.missing_stains} must be in [0, 1)")
        try:
            self.biopsy()
        except ValueError as exc:
            raise SynthError(f"biopsy anatomy: {exc}") from exc

    def biopsy(self) -> BiopsyAnatomy:
        """The needle cores of ``anatomy: biopsy``."""
        return BiopsyAnatomy(tuple(self.cores), tuple(self.core_length_mm),
                             tuple(self.core_width_mm))


@dataclass(frozen=True)
class PatientPlan:
    patient_id: str
    index: int
    cohort: str
    label: int  # the label the lesions were rendered for
    burden: float
    stains: tuple[str, ...] = ()  # the stains the patient has (the others are missing)


@dataclass
class SynthResult:
    out: Path
    study: Path
    rendered: int = 0
    reused: int = 0
    truth: dict = field(default_factory=dict)


def _save_png(image: np.ndarray, path: Path) -> None:
    tmp = partial_path(path)
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def plan_cohort(settings: SynthSettings) -> list[PatientPlan]:
    """Patients, cohorts, balanced labels and latent lesion burdens (no rendering)."""
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 0]))
    plans = []
    index = 0
    for cohort, n, prefix in (("development", settings.patients, "DEV"),
                              ("external", settings.external, "EXT")):
        labels = np.array([1] * (n // 2) + [0] * (n - n // 2))
        rng.shuffle(labels)
        for k, label in enumerate(labels):
            mean = 0.5 + (0.25 * settings.signal) * (-1 if label == 1 else 1)
            conc = 6.0
            burden = float(rng.beta(conc * mean, conc * (1 - mean)))
            plans.append(PatientPlan(f"{prefix}-{k + 1:03d}", index, cohort, int(label), burden,
                                     patient_stains(settings, index)))
            index += 1
    return plans


def patient_stains(settings: SynthSettings, index: int) -> tuple[str, ...]:
    """The stains patient ``index`` has: each missing with probability ``missing_stains``,
    one (drawn at random) kept when all would be (its own seeded stream: the rest of the
    phantom does not change with the rate)."""
    if settings.missing_stains == 0:
        return tuple(settings.stains)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 4, index]))
    kept = [s for s in settings.stains if rng.random() >= settings.missing_stains]
    return tuple(kept) if kept else (settings.stains[int(rng.integers(len(settings.stains)))],)


def _style(cohort: str) -> CohortStyle:
    return EXTERNAL_STYLE if cohort == "external" else DEVELOPMENT_STYLE


def _slide_name(patient_id: str, stain: str) -> str:
    return f"{patient_id}_{stain}"


def patient_geometry(settings: SynthSettings, plan: PatientPlan):
    """The patient's geometry: the canvas of ``--size`` (band), or one sized to its cores
    (biopsy)."""
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 1, plan.index]))
    if settings.anatomy == "biopsy":
        cores, width, height = draw_cores(rng, settings.biopsy())
        return make_patient_geometry(rng, width, height, plan.burden, cores)
    width, height = parse_size(settings.size, settings.mpp)
    return make_patient_geometry(rng, width, height, plan.burden)


def render_patient(out: Path, settings: SynthSettings, plan: PatientPlan) -> dict:
    """Render (or reuse, when complete) every stain of one patient; return its truth record."""
    geometry = patient_geometry(settings, plan)
    style = _style(plan.cohort)
    slides, rendered = {}, 0
    for k, stain in enumerate(settings.stains):
        if stain not in plan.stains:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 2, plan.index, k]))
        section = section_of(geometry, rng)
        od = compartment_od(stain, style, rng)
        name = _slide_name(plan.patient_id, stain)
        paths = {"slide": out / "slides" / f"{name}.tiff", "mask": out / "masks" / f"{name}.png",
                 "thumbnail": out / "thumbnails" / f"{name}.png"}
        if not all(p.exists() for p in paths.values()):
            renderer = SectionRenderer(section, od, style.brightness, settings.mpp,
                                       settings.mask_downsample)
            levels = write_pyramid_strips(paths["slide"], renderer.strips(), renderer.shape,
                                          settings.mpp, style.jpeg_quality)
            _save_png(thumbnail(levels, settings.thumbnail_downsample), paths["thumbnail"])
            _save_png(renderer.labels, paths["mask"])
            rendered += 1
        slides[stain] = {
            "slide": f"slides/{name}.tiff",
            "mask": f"masks/{name}.png",
            "thumbnail": f"thumbnails/{name}.png",
            "section_rotation_deg": round(float(np.rad2deg(section.angle)), 4),
            "section_shift_um": [round(v, 3) for v in section.shift],
            "jpeg_quality": style.jpeg_quality,
            "compartment_od": np.round(od, 5).tolist(),
        }
    lesions = {name: sum(g.lesion == name for g in geometry.glomeruli) for name in GLOMERULAR_LESIONS}
    return {
        "patient_id": plan.patient_id,
        "cohort": plan.cohort,
        "label_rendered": plan.label,
        "burden": round(plan.burden, 6),
        "canvas_um": [round(geometry.width, 3), round(geometry.height, 3)],
        "tissue_mm2": round(geometry.tissue_area_mm2(), 4),
        "cores": len(getattr(geometry.core, "cores", (geometry.core,))),
        "missing_stains": [s for s in settings.stains if s not in plan.stains],
        "glomeruli": len(geometry.glomeruli),
        "lesioned_glomeruli": lesions,
        "fibrosis_patches": len(geometry.patches),
        "tubules": len(geometry.tubules),
        "atrophic_tubules": sum(t.atrophic for t in geometry.tubules),
        "slides": slides,
        "_rendered": rendered,
    }


def _settings_record(settings: SynthSettings) -> dict:
    record = asdict(settings)
    record["stains"] = list(settings.stains)
    for key in ("cores", "core_length_mm", "core_width_mm"):
        record[key] = list(record[key])
    record["lncr_version"] = __version__
    return record


def synthesize(out: str | Path, settings: SynthSettings, workers: int = 1, force: bool = False,
               progress: Callable[[str], None] | None = None) -> SynthResult:
    """Write the phantom study of ``settings`` into ``out`` and return where it is.

    Re-running with the same settings resumes: complete slides are kept (files are written
    under a temporary name and renamed when whole). Different settings in a non-empty folder
    are an error unless ``force``.
    """
    out = Path(out)
    record = _settings_record(settings)
    _prepare_folder(out, record, force)
    plans = plan_cohort(settings)
    result = SynthResult(out=out, study=out / "study.yaml")
    records: dict[str, dict] = {}

    def done(rec: dict) -> None:
        result.rendered += rec["_rendered"]
        result.reused += len(rec["slides"]) - rec["_rendered"]
        records[rec["patient_id"]] = {k: v for k, v in rec.items() if not k.startswith("_")}
        if progress:
            progress(rec["patient_id"])

    if workers <= 1:
        for plan in plans:
            done(render_patient(out, settings, plan))
    else:
        with process_pool(workers) as pool:
            futures = [pool.submit(render_patient, out, settings, plan) for plan in plans]
            for fut in futures:
                done(fut.result())
    labels = _final_labels(plans, settings)
    for pid, rec in records.items():
        rec["label"] = labels[pid]
    _write_tables(out, plans, labels, settings)
    result.truth = _truth(record, settings, records)
    atomic_write_json(out / "truth.json", result.truth)
    return result


def _prepare_folder(out: Path, record: dict, force: bool) -> None:
    """The output folder, emptied of slides made with other settings (only with ``force``),
    and its ``synth.json``."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "synth.json"
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous != record and not force:
            changed = sorted(k for k in set(previous) | set(record)
                             if previous.get(k) != record.get(k))
            raise SynthError(f"{out} holds a phantom made with other settings "
                             f"({', '.join(changed)}); choose another folder or pass --force "
                             "to replace it")
        if previous != record:
            for sub in ("slides", "masks", "thumbnails"):
                for f in (out / sub).glob("*"):
                    f.unlink()
    elif any(out.iterdir()) and not force:
        raise SynthError(f"{out} is not empty and was not written by lncr synth; choose an empty "
                         "folder or pass --force")
    for sub in ("slides", "masks", "thumbnails"):
        (out / sub).mkdir(exist_ok=True)
    atomic_write_json(marker, record)


def _final_labels(plans: list, settings: SynthSettings) -> dict[str, int]:
    """Each patient's label: as planned, or shuffled within each cohort (a null cohort)."""
    labels = {p.patient_id: p.label for p in plans}
    if settings.permute_labels:
        rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 3]))
        for cohort in ("development", "external"):
            ids = [p.patient_id for p in plans if p.cohort == cohort]
            shuffled = [labels[i] for i in ids]
            rng.shuffle(shuffled)
            labels.update(zip(ids, shuffled))
    return labels


def _write_tables(out: Path, plans: list, labels: dict[str, int],
                  settings: SynthSettings) -> None:
    atomic_write_text(out / "patients.csv", "patient_id,cohort,label\n" + "".join(
        f"{p.patient_id},{p.cohort},{labels[p.patient_id]}\n" for p in plans))
    atomic_write_text(out / "slides.csv", "patient_id,stain,path\n" + "".join(
        f"{p.patient_id},{s},slides/{_slide_name(p.patient_id, s)}.tiff\n"
        for p in plans for s in settings.stains if s in p.stains))
    atomic_write_text(out / "study.yaml", (
        f"# Phantom lupus-nephritis cohort written by `lncr synth` (lncr {__version__}).\n"
        "# Ground truth (lesion burden per patient, generator settings) is in truth.json.\n"
        "name: phantom\n"
        "patients: patients.csv\n"
        "slides: slides.csv\n"
        f"stains: [{', '.join(settings.stains)}]\n"))


def _truth(record: dict, settings: SynthSettings, records: dict[str, dict]) -> dict:
    """``truth.json``: the generator's settings and model, and every patient's truth."""
    width, height = parse_size(settings.size, settings.mpp)
    canvas = {"canvas_um": [width, height],
              "canvas_px": [int(round(width / settings.mpp)), int(round(height / settings.mpp))]}
    if settings.anatomy == "biopsy":  # sized to each patient's cores
        canvas = {"canvas_um": "per patient (patients.<id>.canvas_um)", "canvas_px": None}
    return {
        "generator": {
            **record,
            **canvas,
            "mask_codes": MASK_CODES,
            "compartments": list(COMPARTMENTS),
            "dyes": {k: list(v) for k, v in DYES.items()},
            "recipes": {k: {"dyes": list(r.dyes),
                            "uptake": {c: list(u) for c, u in r.uptake.items()}}
                        for k, r in RECIPES.items() if k in settings.stains},
            "styles": {"development": asdict(DEVELOPMENT_STYLE),
                       "external": asdict(EXTERNAL_STYLE)},
            "label_model": "burden ~ Beta(6m, 6(1-m)), m = 0.5 + 0.25*signal for label 0 and "
                           "0.5 - 0.25*signal for label 1; P(glomerular lesion) = 0.05 + "
                           "0.8*burden; fibrotic area fraction ≈ 0.02 + 0.35*burden",
        },
        "patients": {pid: records[pid] for pid in sorted(records)},
    }
