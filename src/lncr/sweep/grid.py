"""The sweep's grid: stains × magnifications × architectures × bag sizes × repeats (× folds).

Every cell is one independent training :class:`Unit`. Repeat ``r`` trains with seed
``training.seed + r``. With ``sweep.resplit``, repeat ``r > 0`` also draws its own stratified,
patient-level split of the development patients (seed ``split.seed + r``; external patients
never enter it) and its run folder is tagged ``-split<r>``; repeat 0 always uses the study's
recorded split, so the final model of a configuration can be the sweep's own repeat 0.

With ``sweep.validation: kfold``, repeat ``r`` partitions the development patients into
``sweep.folds`` stratified folds (seed ``split.seed + r``, :mod:`lncr.study.folds`) and every
configuration is trained once per fold: the unit of fold ``f`` is tagged ``-fold<f>`` and
validates on that fold's patients. A final model is then trained on every development patient
(tag ``-dev``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lncr.study.config import StudyConfig, sweep_magnifications, sweep_stains
from lncr.study.folds import fold_sides, study_folds
from lncr.study.split import stratified_split
from lncr.training.loop import RunSpec


@dataclass(frozen=True)
class Unit:
    """One training run of the sweep (or one final model): a :class:`RunSpec` and the repeat
    it belongs to."""

    spec: RunSpec
    repeat: int = 0

    @classmethod
    def of(cls, stain: str, magnification: str, architecture: str, bag_size: int, repeat: int,
           seed: int, split: str = "") -> Unit:
        """``split``: "" = the study's split; "split<r>" = repeat r's own split."""
        return cls(RunSpec(stain, magnification, architecture, bag_size, seed, split), repeat)

    @classmethod
    def from_row(cls, row: dict) -> Unit:
        """The unit of a result row (:meth:`to_dict`'s keys)."""
        return cls.of(*(row[k] for k in UNIT_KEYS))

    stain = property(lambda self: self.spec.stain)
    magnification = property(lambda self: self.spec.magnification)
    architecture = property(lambda self: self.spec.architecture)
    bag_size = property(lambda self: self.spec.bag_size)
    seed = property(lambda self: self.spec.seed)
    split = property(lambda self: self.spec.split)

    @property
    def name(self) -> str:
        tag = f"-{self.split}" if self.split else ""
        return (f"{self.stain}/{self.magnification}/{self.architecture}-b{self.bag_size}"
                f"-s{self.seed}{tag}")

    @property
    def fold(self) -> int | None:
        """The unit's fold (``sweep.validation: kfold``), else None."""
        return int(self.split[4:]) if self.split.startswith("fold") else None

    @property
    def configuration(self) -> tuple[str, str, int]:
        """What the sweep compares: (stain, architecture, bag size)."""
        return self.stain, self.architecture, self.bag_size

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in UNIT_KEYS}


#: A unit's columns in the sweep's tables, in order.
UNIT_KEYS = ("stain", "magnification", "architecture", "bag_size", "repeat", "seed", "split")


#: The split tag of a model trained on every development patient (k-fold's final models).
ALL_DEVELOPMENT = "dev"


def split_tags(config: StudyConfig, repeat: int) -> list[str]:
    """The split tags of one repeat: one per fold with k-fold, else "" (the study's split) or
    ``split<r>`` (its own split, ``sweep.resplit``)."""
    sw = config.sweep
    if sw.validation == "kfold":
        return [f"fold{f}" for f in range(sw.folds)]
    return [f"split{repeat}" if sw.resplit and repeat > 0 else ""]


def build_grid(config: StudyConfig) -> list[Unit]:
    """Every unit of the sweep, in a fixed order (stain, magnification, architecture, bag size,
    repeat, fold)."""
    sw = config.sweep
    return [Unit.of(stain, mag, arch, bag, r, config.training.seed + r, tag)
            for stain in sweep_stains(config)
            for mag in sweep_magnifications(config)
            for arch in sw.architectures
            for bag in sw.bag_sizes
            for r in range(sw.repeats)
            for tag in split_tags(config, r)]


def unit_sides(patients: pd.DataFrame, config: StudyConfig, unit: Unit) -> dict[str, str] | None:
    """Each development patient's side (``train``/``val``) in ``unit``'s split; None when the
    unit uses the study's recorded split."""
    if not unit.split:
        return None
    if unit.split == ALL_DEVELOPMENT:
        return {p: "train" for p in patients[patients.cohort == "development"].patient_id}
    if unit.fold is not None:
        return fold_sides(study_folds(patients, config, unit.repeat), unit.fold)
    split = repeat_split(patients, config, unit.repeat)
    return dict(zip(split.patient_id, split.split))


def repeat_split(patients: pd.DataFrame, config: StudyConfig, repeat: int) -> pd.DataFrame:
    """Repeat ``repeat``'s own stratified patient-level split (``patient_id, label, split``)."""
    return stratified_split(patients, config.split.val_fraction, config.split.seed + repeat)


def write_repeat_splits(folder: Path, patients: pd.DataFrame, config: StudyConfig) -> list[Path]:
    """Record every re-drawn split as ``<folder>/split<r>.csv`` and every repeat's folds as
    ``<folder>/folds<r>.csv`` (written once, then checked by the runs themselves through their
    ``split.csv``)."""
    from lncr.fileio import atomic_write_text

    paths = []
    if config.sweep.validation == "kfold":
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(config.sweep.repeats):
            path = folder / f"folds{r}.csv"
            atomic_write_text(path, study_folds(patients, config, r).to_csv(index=False))
            paths.append(path)
        return paths
    if not config.sweep.resplit:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(1, config.sweep.repeats):
        path = folder / f"split{r}.csv"
        atomic_write_text(path, repeat_split(patients, config, r).to_csv(index=False))
        paths.append(path)
    return paths
