"""Run one sweep unit — or a group of units trained together — in a worker process (local
pool or Ray) and report what happened.

:func:`run_unit` and :func:`run_group` never raise: a failing unit returns
``status="failed"`` with the error and its traceback, so one bad configuration cannot stop the
sweep. A :class:`GroupTask` trains its units as one stacked model
(:mod:`lncr.training.group`), each with exactly its lone results. Everything a unit produces is
in its run folder (:func:`lncr.training.trainer.train_run`), which also makes a unit resumable:
a finished run is skipped and an interrupted one continues from ``last.pt``.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lncr.sweep.grid import ALL_DEVELOPMENT, Unit, unit_sides

if TYPE_CHECKING:
    from lncr.study.validate import Study


@dataclass(frozen=True)
class UnitTask:
    """Everything a worker needs to run a unit (picklable: it crosses process borders)."""

    unit: Unit
    study: Study
    runs_root: str
    epochs: int  # the run's total epochs (its learning-rate schedule)
    stop_epoch: int  # train up to here now (< epochs: a successive-halving rung)
    device: str = "auto"
    threads: int = 1
    weights: str | None = None  # "imagenet", a local file, or None (random initialisation)
    frozen: bool = False  # train with the backbone frozen (sweep.backbone: frozen's grid)


@dataclass(frozen=True)
class GroupTask:
    """Units of one architecture and bag size on cached features, trained together
    (``sweep.group_size``, :mod:`lncr.sweep.groups`); otherwise as :class:`UnitTask`."""

    units: tuple[Unit, ...]
    study: Study
    runs_root: str
    epochs: int
    stop_epoch: int
    device: str = "auto"
    threads: int = 1
    weights: str | None = None
    frozen: bool = True

    def unit_task(self, unit: Unit) -> UnitTask:
        return UnitTask(unit, self.study, self.runs_root, self.epochs, self.stop_epoch,
                        self.device, self.threads, self.weights, self.frozen)


Task = UnitTask | GroupTask


def task_units(task: Task) -> tuple[Unit, ...]:
    return task.units if isinstance(task, GroupTask) else (task.unit,)


def run_task(task: Task) -> list[dict]:
    """What a worker runs: a unit's row, or each row of a group."""
    return run_group(task) if isinstance(task, GroupTask) else [run_unit(task)]


def unit_metrics(folder: Path) -> dict:
    """The last epoch's validation and training figures of a run folder (NaN if none)."""
    out = {"epochs_trained": 0, "val_auc": math.nan, "val_loss": math.nan,
           "train_auc": math.nan, "train_loss": math.nan, "best_val_auc": math.nan}
    path = folder / "metrics.csv"
    if not path.exists():
        return out
    metrics = pd.read_csv(path)
    if metrics.empty:
        return out
    last = metrics.iloc[-1]
    out.update(epochs_trained=int(last.epoch) + 1, val_auc=float(last.val_auc),
               val_loss=float(last.val_loss), train_auc=float(last.train_auc),
               train_loss=float(last.train_loss), best_val_auc=float(metrics.val_auc.max()))
    if math.isnan(out["val_auc"]):
        out["val_auc_note"] = missing_auc_reason(folder)
    return out


def missing_auc_reason(folder: Path) -> str:
    """Why a run has no validation AUC, from the slides its ``split.csv`` lists."""
    path = folder / "split.csv"
    if not path.exists():
        return "no split.csv in the run folder"
    val = pd.read_csv(path)
    val = val[val.split == "val"]
    if val.empty and folder.name.endswith(f"-{ALL_DEVELOPMENT}"):
        return "trained on every development patient: validated out of fold by its fold models"
    if val.empty:
        return "no validation slide has tiles at this magnification"
    counts = val.label.value_counts()
    if len(counts) == 1:
        only = "CR" if counts.index[0] == 1 else "non-CR"
        return (f"the {int(counts.iloc[0])} validation slides with tiles at this magnification "
                f"are all {only}")
    return "the validation predictions were not finite"


def result_row(unit: Unit, folder: Path, status: str, error: str = "", **extra) -> dict:
    """A unit's row for ``units.csv``: its configuration, status, error and the figures read
    from its run folder."""
    return {**unit.to_dict(), "folder": str(folder), "status": status, "error": error,
            "traceback": "", "seconds": 0.0, **unit_metrics(folder), **extra}


#: A worker reads each stain × magnification's slides once per study it is sent.
_ENTRIES: dict[tuple, tuple] = {}


def unit_entries(task: UnitTask):
    """The unit's study config, its slides (with the repeat's own split applied if it has
    one) and the patients without tiles there."""
    from lncr.data.entries import study_entries, unusable_patients, with_sides

    u, study = task.unit, task.study
    key = (study.source["study"], study.overrides, u.stain, u.magnification)
    if key not in _ENTRIES:
        _ENTRIES[key] = (study.config, study_entries(study, u.stain, u.magnification),
                         unusable_patients(study, u.stain, u.magnification))
    cfg, entries, excluded = _ENTRIES[key]
    return cfg, with_sides(entries, unit_sides(study.patients, cfg, u)), excluded


def run_unit(task: UnitTask) -> dict:
    """Train ``task.unit`` up to ``task.stop_epoch``; a result row, never an exception."""
    import torch

    from lncr.features.embed import FeatureCache
    from lncr.layout import Layout
    from lncr.training.trainer import train_run

    t0 = time.perf_counter()
    torch.set_num_threads(task.threads)
    u = task.unit
    folder = u.spec.folder(Path(task.runs_root))
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    if (task.stop_epoch < task.epochs
            and unit_metrics(folder)["epochs_trained"] >= task.stop_epoch):
        return result_row(u, folder, "paused", **where)  # already at this rung (a resume)
    try:
        cfg, entries, excluded = unit_entries(task)
        settings = _unit_settings(task, cfg)
        stop = None
        if task.stop_epoch < task.epochs:
            def stop(epoch: int, step: int | None) -> bool:
                return step is None and epoch + 1 >= task.stop_epoch
        train_run(u.spec, entries, settings, Path(task.runs_root), cfg.tiling.tile_size,
                  weights=task.weights, device=task.device, stop_after=stop,
                  source=task.study.source, excluded=excluded,
                  features=FeatureCache(Layout(cfg.output_dir), cfg.embedding))
        status = "done" if (folder / "done.json").exists() else "paused"
        row = result_row(u, folder, status, **where)
    except Exception as exc:  # recorded, and the sweep goes on
        row = result_row(u, folder, "failed", f"{type(exc).__name__}: {exc}", **where)
        row["traceback"] = traceback.format_exc()
    row["seconds"] = time.perf_counter() - t0
    return row


def _unit_settings(task: UnitTask, cfg):
    settings = cfg.training.model_copy(update={"epochs": task.epochs})
    if task.frozen:
        settings = settings.model_copy(update={"backbone_lr_factor": 0.0})
    return settings


def run_group(task: GroupTask) -> list[dict]:
    """Train ``task.units`` together up to ``task.stop_epoch``; a row per unit (its share of
    the group's seconds), never an exception."""
    import torch

    from lncr.features.embed import FeatureCache
    from lncr.layout import Layout
    from lncr.training.group import GroupTrainer
    from lncr.training.trainer import Trainer

    t0 = time.perf_counter()
    torch.set_num_threads(task.threads)
    root = Path(task.runs_root)
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    rows: dict[str, dict] = {}
    members: list[tuple[Unit, Trainer]] = []
    for u in task.units:
        folder = u.spec.folder(root)
        if (task.stop_epoch < task.epochs
                and unit_metrics(folder)["epochs_trained"] >= task.stop_epoch):
            rows[u.name] = result_row(u, folder, "paused", **where)
            continue
        try:
            cfg, entries, excluded = unit_entries(task.unit_task(u))
            members.append((u, Trainer(
                u.spec, entries, _unit_settings(task.unit_task(u), cfg), root,
                cfg.tiling.tile_size, task.weights, task.device, source=task.study.source,
                excluded=excluded, features=FeatureCache(Layout(cfg.output_dir),
                                                         cfg.embedding))))
        except Exception as exc:  # recorded, and the group goes on
            rows[u.name] = result_row(u, folder, "failed", f"{type(exc).__name__}: {exc}",
                                      traceback=traceback.format_exc(), **where)
    stop = None
    if task.stop_epoch < task.epochs:
        def stop(index: int, epoch: int, step: int | None) -> bool:
            return step is None and epoch + 1 >= task.stop_epoch
    trainer = GroupTrainer([t for _, t in members], stop)
    try:
        finished = trainer.run()
    except Exception as exc:  # the group could not run at all: each unit says why
        for m in trainer.members:
            m.error = m.error or exc
        finished = trainer.members
    for (u, _), m in zip(members, finished):
        folder = m.trainer.folder
        if m.error is not None:
            rows[u.name] = result_row(u, folder, "failed",
                                      f"{type(m.error).__name__}: {m.error}", **where)
        else:
            status = "done" if (folder / "done.json").exists() else "paused"
            rows[u.name] = result_row(u, folder, status, **where)
    share = (time.perf_counter() - t0) / max(1, len(task.units))
    return [{**rows[u.name], "seconds": share, "group": len(task.units),
             "stacked": trainer.chunk_size} for u in task.units]
