"""Which sweep units can do their job on the slides they have (sparse data).

A unit needs training patients with tiles of both outcomes (at least
``training.min_patients_per_outcome`` of each); a unit of the split protocol also needs
validation patients with tiles of both outcomes (an AUC); a k-fold unit needs every fold of
its repeat to train and the pooled development patients with tiles to hold both outcomes. A
unit that cannot is skipped with the reason (docs/sweep.md, "Sparse data"); a final model
needs training data only.
"""

from __future__ import annotations

import dataclasses

from lncr.data.entries import with_sides
from lncr.study.validate import Study
from lncr.sweep.grid import ALL_DEVELOPMENT, Unit, unit_sides


class Feasibility:
    """The slides of each unit of a study, on the sides of its split, and what they allow
    (stain × magnification slides and split sides are read once)."""

    def __init__(self, study: Study):
        self.study, self.cfg = study, study.config
        self._entries: dict[tuple[str, str], list] = {}  # stain × magnification's slides
        self._sides: dict[tuple[str, int], dict | None] = {}  # (split tag, repeat) → sides
        self._folds: dict[tuple[str, str, int], str] = {}  # (stain, mag, repeat) → problem

    def entries(self, u: Unit) -> list:
        """The unit's slides with tiles, on the sides of its split."""
        from lncr.data.entries import study_entries

        key = (u.stain, u.magnification)
        if key not in self._entries:
            self._entries[key] = study_entries(self.study, *key)
        if (u.split, u.repeat) not in self._sides:
            self._sides[u.split, u.repeat] = unit_sides(self.study.patients, self.cfg, u)
        return with_sides(self._entries[key], self._sides[u.split, u.repeat])

    def problem(self, u: Unit, final: bool = False) -> str:
        """Why ``u`` cannot give what the sweep needs of it ("" when it can): a model of both
        outcomes (every unit), a validation AUC (a unit of the split protocol), or its share
        of the out-of-fold predictions (a fold: every fold of its repeat must train, and the
        pooled patients hold both outcomes). A final model needs training data only."""
        from lncr.data.entries import (
            OUTCOME,
            side_patients,
            training_problem,
            validation_problem,
        )

        if u.fold is None:
            entries = self.entries(u)
            why = training_problem(entries, self.cfg.training.min_patients_per_outcome)
            return why or ("" if final or u.split == ALL_DEVELOPMENT
                           else validation_problem(entries))
        why = self.folds_problem(u)
        if why:
            return why
        entries = self.entries(u)
        if not sum(side_patients(entries, "val").values()):
            return f"fold {u.fold} holds no development patient with tiles here"
        pool = {(e.patient_id, e.label) for e in entries if e.split in ("train", "val")}
        labels = {label for _, label in pool}
        if len(labels) < 2:
            return (f"the {len(pool)} development patient(s) with tiles are all "
                    f"{OUTCOME[labels.pop()] if labels else 'absent'}: no out-of-fold AUC")
        return ""

    def folds_problem(self, u: Unit) -> str:
        """Why one fold of ``u``'s repeat cannot train ("" when every fold can): one fold that
        cannot train loses its patients from the pooled predictions. Checked once per stain ×
        magnification × repeat."""
        from lncr.data.entries import training_problem

        key = (u.stain, u.magnification, u.repeat)
        if key not in self._folds:
            self._folds[key] = ""
            for f in range(self.cfg.sweep.folds):
                fold = dataclasses.replace(u, spec=dataclasses.replace(u.spec, split=f"fold{f}"))
                why = training_problem(self.entries(fold),
                                       self.cfg.training.min_patients_per_outcome)
                if why:
                    self._folds[key] = f"fold {f}: {why}"
                    break
        return self._folds[key]


def remedy(validation: str) -> str:
    """What to try when too few patients with tiles can train or validate a model."""
    kfold = ("" if validation == "kfold" else
             "use sweep.validation=kfold (every development patient validates once), ")
    return (f"Fix: {kfold}tile at magnifications that keep tissue (a smaller tiling.tile_size "
            "keeps more tiles of a needle core), or add patients")
