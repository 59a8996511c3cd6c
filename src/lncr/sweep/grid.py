"""The sweep's grid: stains × magnifications × architectures × bag sizes × repeats.

Every cell is one independent training :class:`Unit`. Repeat ``r`` trains with seed
``training.seed + r``. With ``sweep.resplit``, repeat ``r > 0`` also draws its own stratified,
patient-level split of the development patients (seed ``split.seed + r``; external patients
never enter it) and its run folder is tagged ``-split<r>``; repeat 0 always uses the study's
recorded split, so the final model of a configuration can be the sweep's own repeat 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lncr.study.config import StudyConfig
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
    def configuration(self) -> tuple[str, str, int]:
        """What the sweep compares: (stain, architecture, bag size)."""
        return self.stain, self.architecture, self.bag_size

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in UNIT_KEYS}


#: A unit's columns in the sweep's tables, in order.
UNIT_KEYS = ("stain", "magnification", "architecture", "bag_size", "repeat", "seed", "split")


def sweep_stains(config: StudyConfig) -> tuple[str, ...]:
    return tuple(config.sweep.stains or config.stains)


def sweep_magnifications(config: StudyConfig) -> tuple[str, ...]:
    return tuple(config.sweep.magnifications or config.magnification_labels())


def build_grid(config: StudyConfig) -> list[Unit]:
    """Every unit of the sweep, in a fixed order (stain, magnification, architecture, bag size,
    repeat)."""
    sw = config.sweep
    return [Unit.of(stain, mag, arch, bag, r, config.training.seed + r,
                 f"split{r}" if sw.resplit and r > 0 else "")
            for stain in sweep_stains(config)
            for mag in sweep_magnifications(config)
            for arch in sw.architectures
            for bag in sw.bag_sizes
            for r in range(sw.repeats)]


def repeat_split(patients: pd.DataFrame, config: StudyConfig, repeat: int) -> pd.DataFrame:
    """Repeat ``repeat``'s own stratified patient-level split (``patient_id, label, split``)."""
    return stratified_split(patients, config.split.val_fraction, config.split.seed + repeat)


def write_repeat_splits(folder: Path, patients: pd.DataFrame, config: StudyConfig) -> list[Path]:
    """Record every re-drawn split as ``<folder>/split<r>.csv`` (written once, then checked by
    the runs themselves through their ``split.csv``)."""
    from lncr.fileio import atomic_write_text

    paths = []
    if not config.sweep.resplit:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(1, config.sweep.repeats):
        path = folder / f"split{r}.csv"
        atomic_write_text(path, repeat_split(patients, config, r).to_csv(index=False))
        paths.append(path)
    return paths
