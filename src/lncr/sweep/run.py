"""``lncr sweep``: run the grid, choose the final configuration, train the final models.

Folder ``<output_dir>/sweep/``:

- ``sweep.json`` — the grid, the settings, the executor, timings and package versions;
- ``runs/<stain>/<mag>/<arch>-b<bag>-s<seed>[-split<r>]/`` — one training run per unit;
- ``splits/split<r>.csv`` — each repeat's own split (with ``sweep.resplit``), or
  ``splits/folds<r>.csv`` — each repeat's folds (with ``sweep.validation: kfold``);
- ``units.csv`` — one row per unit: status (``done``, ``failed``, ``stopped`` by successive
  halving, ``skipped`` — not trained because its split cannot train or validate a model, the
  reason in ``error`` — or ``pending``), epochs trained, last-epoch validation AUC/loss,
  seconds, error;
- ``criterion.csv`` — the scores the selection compares, one per configuration ×
  magnification × repeat (:mod:`lncr.sweep.criterion`; with k-fold, the pooled out-of-fold
  AUC, and ``oof_predictions.csv`` beside it);
- ``failures/<unit>.txt`` — the traceback of each failed unit;
- ``summary.csv`` — per stain × magnification × architecture × bag size: mean ± s.d. and
  every repeat's validation AUC and loss (:func:`lncr.sweep.selection.summary_table`);
- ``selection.json`` — the chosen architecture per stain and bag size, the rule, the evidence,
  the stain × magnifications left out and why, the selection's stability and, with early
  stopping, the compute it saved.

Final models go to ``<output_dir>/final/``: ``models.csv`` (one row per stain × magnification:
configuration, run folder, status; ``skipped`` with the reason when too few training patients
of an outcome have tiles there) and ``final.json``. A final model is the selected
configuration trained with ``training.seed`` on the study's recorded split for
``training.epochs``; when the sweep already trained exactly that run (its repeat 0 with the
same epochs), the sweep's run is used rather than trained again. With k-fold, it is trained on
every development patient, and the configuration's fold models (``final/folds.csv``) give the
development patients' out-of-fold predictions.

Re-running resumes: finished units are read from their folders without starting a worker,
interrupted ones continue from their last checkpoint, and failed ones are tried again.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lncr.errors import BadInput, WorkFailed
from lncr.fileio import atomic_write_json, atomic_write_text
from lncr.identifiers import file_name
from lncr.layout import Layout, write_table
from lncr.locks import locks_output
from lncr.paths import store_columns, stored
from lncr.study.config import sweep_stains
from lncr.study.validate import Study
from lncr.sweep.criterion import criterion_table, left_out, pooled_at, stability
from lncr.sweep.executors import Executor
from lncr.sweep.feasibility import Feasibility, remedy
from lncr.sweep.final_models import (
    ensemble_rows,
    final_row,
    final_units,
    fold_table,
    fold_units,
    unselected_rows,
    with_oof_auc,
)
from lncr.sweep.grid import Unit, build_grid, write_repeat_splits
from lncr.sweep.halving import halving_rungs, promote, score_at
from lncr.sweep.selection import (
    complete_failures,
    failure_lines,
    rule_text,
    select,
    summary_table,
)
from lncr.sweep.unit import UnitTask, result_row

UNIT_COLUMNS = ["stain", "magnification", "architecture", "bag_size", "repeat", "seed", "split",
                "status", "epochs_trained", "val_auc", "val_loss", "train_auc", "train_loss",
                "best_val_auc", "seconds", "group", "folder", "error", "val_auc_note"]


@dataclass
class SweepReport:
    """What :func:`run_sweep` did."""

    folder: Path
    units: pd.DataFrame
    summary: pd.DataFrame
    selection: dict | None
    final: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # whole architectures/groups that failed
    unusable: dict[str, list[dict]] = field(default_factory=dict)  # patients without tiles

    def stains_without_model(self) -> dict[str, str]:
        """Swept stains without a finished final model (or, before final models, without a
        selected architecture): stain → why."""
        sel = self.selection or {}
        out = dict(sel.get("unselected_stains", {}))
        if self.final is not None:
            for stain, part in self.final.groupby("stain", sort=False):
                if stain not in out and not (part.status == "done").any():
                    out[stain] = "; ".join(f"{r.magnification}: {r.error}"
                                           for r in part.itertuples())
        return out


class SweepFailed(WorkFailed):
    """No sweep unit finished: nothing could be selected (``selection.json`` says why)."""


class _Book:
    """The sweep's bookkeeping: ``units.csv`` and failure tracebacks, rewritten atomically as
    results come in (the main process is the only writer); run folders are stored relative to
    the output folder (``output_dir``)."""

    def __init__(self, path: Path, units: list[Unit], output_dir: Path):
        self.path, self.folder = path, path.parent  # units.csv; failures/ beside it
        self.output_dir = output_dir
        self.rows: dict[str, dict] = {
            u.name: {**u.to_dict(), "status": "pending", "epochs_trained": 0,
                     "val_auc": math.nan, "val_loss": math.nan, "train_auc": math.nan,
                     "train_loss": math.nan, "best_val_auc": math.nan, "seconds": 0.0,
                     "group": 1, "folder": "", "error": ""} for u in units}
        self.seconds = 0.0

    def record(self, name: str, row: dict, write: bool = True) -> None:
        t0 = time.perf_counter()
        self.rows[name].update({k: row[k] for k in UNIT_COLUMNS if k in row})
        if row.get("status") == "failed":
            failures = self.folder / "failures"
            failures.mkdir(parents=True, exist_ok=True)
            atomic_write_text(failures / (file_name(name.replace("/", "_")) + ".txt"),
                              f"{name}\n{row.get('error', '')}\n\n{row.get('traceback', '')}")
        if write:
            self.write()
        self.seconds += time.perf_counter() - t0

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()), columns=UNIT_COLUMNS)

    def write(self) -> None:
        table = store_columns(self.table(), ["folder"], self.output_dir)
        write_table(self.path, table)


def _run_units(units: list[Unit], make_task: Callable[[Unit, int], UnitTask], stop_epoch: int,
               book: _Book, executor_factory, progress,
               grouping: Callable[[list[UnitTask]], list] = list) -> dict[str, dict]:
    """Run ``units`` to ``stop_epoch``; finished runs are read, not dispatched. ``progress``
    gets each finished unit's row with ``done`` and ``total`` (units of this dispatch) and
    ``eta_s`` (the seconds left at the mean pace so far)."""
    results: dict[str, dict] = {}
    tasks = []
    for u in units:
        task = make_task(u, stop_epoch)
        folder = u.spec.folder(Path(task.runs_root))
        if (folder / "done.json").exists():
            results[u.name] = result_row(u, folder, "done")
            book.record(u.name, results[u.name], write=False)
        else:
            tasks.append(task)
    book.write()  # once for every unit read from disk
    if tasks:
        started = time.perf_counter()
        total = len(tasks)
        tasks = grouping(tasks)  # units that train together (sweep.group_size)
        group_left = 0  # rows of the current group still to come (they finished with it)
        for done, row in enumerate(executor_factory().map(tasks), start=1):
            name = Unit.from_row(row).name
            results[name] = row
            book.record(name, row)
            group_left = (group_left or int(row.get("group", 1))) - 1
            if progress:
                pace = (time.perf_counter() - started) / (done + group_left)
                progress({**row, "done": done, "total": total,
                          "eta_s": pace * (total - done - group_left)})
    return results


@locks_output
def run_sweep(study: Study, executor: str | Executor | None = None,
              workers: int | None = None, address: str | None = None, device: str = "auto",
              final: bool = True, progress: Callable[[dict], None] | None = None
              ) -> SweepReport:
    """Run (or resume) the sweep of a validated, tiled study; select; train final models.
    ``executor`` is a registered name (``sweep.executor`` by default) or an object with the
    :class:`~lncr.sweep.executors.Executor` protocol."""
    return Sweep(study, executor, workers, address, device, progress).run(final)


class Sweep:
    """One study's sweep: the grid in successive-halving rungs, the selection, the final
    models. Units run on an :class:`~lncr.sweep.executors.Executor`, started on first use."""

    def __init__(self, study: Study, executor: str | Executor | None = None,
                 workers: int | None = None, address: str | None = None, device: str = "auto",
                 progress: Callable[[dict], None] | None = None):
        self.study, self.cfg = study, study.config
        sw = self.cfg.sweep
        self.kind = executor.name if hasattr(executor, "map") else (executor or sw.executor)
        self._executor = executor if hasattr(executor, "map") else None
        if self._executor is None:  # an unknown name is refused before any work
            from lncr.registries import EXECUTORS
            from lncr.study.config import registered

            registered(self.kind, list(EXECUTORS), "executor")
        self.workers = sw.workers if workers is None else workers
        self.address, self.device, self.progress = address, device, progress
        self.layout = Layout(self.cfg.output_dir)
        self.folder = self.layout.sweep_dir
        # a frozen grid's runs are kept apart: the same unit fine-tuned is another run
        self.runs_root = self.folder / ("runs-frozen" if sw.backbone == "frozen" else "runs")
        self.epochs = sw.epochs or self.cfg.training.epochs
        self.rungs = (halving_rungs(self.epochs, sw.min_epochs, sw.halving_rate)
                      if sw.early_stopping == "halving" else [self.epochs])
        self.timings = {"executor_start": 0.0}
        self._sizes: dict[str, int] = {}
        self.feasible = Feasibility(study)
        self._owns_executor = self._executor is None

    def executor(self) -> Executor:
        """The executor, started the first time a unit has to run."""
        if self._executor is None:
            from lncr.sweep.executors import make_executor

            t0 = time.perf_counter()
            sw = self.cfg.sweep
            self._executor = make_executor(self.kind, self.workers, sw.unit_cpus, sw.unit_gpus,
                                           self.address, self.device, sw.retries)
            self.timings["executor_start"] += time.perf_counter() - t0
        return self._executor

    def weights(self, architecture: str) -> str | None:
        """A local file from ``sweep.weights``, else the library's ImageNet weights when
        ``training.pretrained``, else none (random initialisation)."""
        return self.cfg.backbone_weights(architecture)

    def tasks(self, root: Path, epochs: int, frozen: bool = False
              ) -> Callable[[Unit, int], UnitTask]:
        """Task maker for runs under ``root`` with a schedule of ``epochs`` (``frozen``: with
        the backbone frozen, on cached features)."""
        def make(u: Unit, stop: int) -> UnitTask:
            return UnitTask(u, self.study, str(root), epochs, stop, self.device,
                            self.cfg.sweep.unit_cpus, self.weights(u.architecture), frozen)
        return make

    def group(self, tasks: list[UnitTask]) -> list:
        """The grid's tasks with the units that train together merged
        (:func:`lncr.sweep.groups.group_tasks`, ``sweep.group_size``)."""
        from lncr.sweep.groups import group_tasks

        workers = getattr(self.executor(), "workers", 0) or self.workers or os.cpu_count() or 1
        return group_tasks(tasks, self.cfg.sweep.group_size, workers)

    @property
    def frozen(self) -> bool:
        """``sweep.backbone: frozen``: the grid's units train on cached features."""
        return self.cfg.sweep.backbone == "frozen"

    def check_frozen(self) -> None:
        """A frozen grid needs pretrained weights for every architecture (a frozen random
        network would be compared with pretrained ones)."""
        if not self.frozen:
            return
        bare = [a for a in self.cfg.sweep.architectures if self.weights(a) is None]
        if bare:
            raise BadInput(
                f"sweep.backbone=frozen freezes every backbone, but {', '.join(bare)} would "
                "start from random weights: give each a file in sweep.weights, set "
                "training.pretrained=true, or drop it from sweep.architectures")

    def size(self, architecture: str) -> int:
        from lncr.sweep.selection import parameter_count

        if architecture not in self._sizes:
            self._sizes[architecture] = parameter_count(architecture, self.cfg.training)
        return self._sizes[architecture]

    def record(self) -> dict:
        from lncr.training.loop import versions

        return {**self.study.source, "executor": self.kind, "address": self.address,
                "patients_without_tiles": self.unusable(),
                "workers": self.workers, "units": len(build_grid(self.cfg)),
                "epochs": self.epochs, "rungs": self.rungs,
                "settings": self.cfg.sweep.model_dump(mode="json"),
                "training": self.cfg.training.model_dump(mode="json"), "versions": versions()}

    def unusable(self) -> dict[str, list[dict]]:
        """Per stain × magnification of the grid, the patients without tiles there (the
        units leave them out; each run records them too)."""
        from lncr.data.entries import unusable_patients

        out = {}
        for stain in sweep_stains(self.cfg):
            for mag in self.cfg.magnification_labels():
                lost = unusable_patients(self.study, stain, mag)
                if lost:
                    out[f"{stain} {mag}"] = lost
        return out

    def run(self, final: bool = True) -> SweepReport:
        t_start = time.perf_counter()
        self.check_frozen()
        self.folder.mkdir(parents=True, exist_ok=True)
        write_repeat_splits(self.folder / "splits", self.study.patients, self.cfg)
        record = self.record()
        atomic_write_json(self.layout.sweep_record, {**record, "status": "running"})
        try:
            book = self.run_grid()
            table = book.table()
            criterion, oof = criterion_table(table, self.cfg.sweep.validation)
            self.write_criterion(criterion, oof)
            summary = summary_table(criterion)
            write_table(self.layout.sweep_summary, summary)
            selection, lines = self.select(table, criterion, oof)
            final_table = self.train_final(selection) if final else None
        finally:
            if self._owns_executor and self._executor is not None \
                    and hasattr(self._executor, "close"):
                self._executor.close()
        self.timings["bookkeeping"] = book.seconds
        self.timings["total"] = time.perf_counter() - t_start
        atomic_write_json(self.layout.sweep_record, {**record, "status": "finished",
                                                       "timings": self.timings})
        return SweepReport(self.folder, table, summary, selection, final_table, self.timings,
                           lines, record["patients_without_tiles"])

    def write_criterion(self, criterion: pd.DataFrame, oof: pd.DataFrame | None) -> None:
        write_table(self.layout.sweep_criterion, criterion)
        if oof is not None:
            write_table(self.layout.sweep_oof_predictions, oof)
        else:  # a study that used k-fold before
            self.layout.sweep_oof_predictions.unlink(missing_ok=True)

    def skip_infeasible(self, units: list[Unit], book: _Book, final: bool = False
                        ) -> list[Unit]:
        """Record the units that cannot be trained (or validated) as ``skipped`` with the
        reason; returns the others."""
        keep = []
        for u in units:
            why = self.feasible.problem(u, final)
            if why:
                folder = u.spec.folder(self.runs_root)
                book.record(u.name, {**u.to_dict(), "status": "skipped", "error": why,
                                     "folder": str(folder)}, write=False)
            else:
                keep.append(u)
        book.write()
        return keep

    def run_grid(self) -> _Book:
        """Every unit to the last rung, stopping the configurations halving drops."""
        units = build_grid(self.cfg)
        book = _Book(self.layout.sweep_units, units, self.cfg.output_dir)
        alive = self.skip_infeasible(units, book)
        for i, rung in enumerate(self.rungs):
            results = _run_units(alive, self.tasks(self.runs_root, self.epochs, self.frozen),
                                 rung, book, self.executor, self.progress, self.group)
            if i < len(self.rungs) - 1:
                alive, stopped = promote(alive, results, rung, self.cfg.sweep.halving_rate,
                                         self.size, self.rung_scores)
                for u in stopped:
                    book.record(u.name, {**results[u.name], "status": "stopped"
                                         if results[u.name]["status"] != "failed" else "failed"})
        return book

    def rung_scores(self, units: list[Unit], results: dict[str, dict], epoch: int
                    ) -> list[tuple[float, float]]:
        """The (AUC, loss) scores of one configuration's units at ``epoch`` (0-based): one per
        unit, or with k-fold one per magnification × repeat, its folds pooled."""
        folders = {u.name: results[u.name]["folder"] for u in units
                   if results.get(u.name, {}).get("status") != "failed"}
        if self.cfg.sweep.validation != "kfold":
            return [score_at(folders[u.name], epoch) for u in units if u.name in folders]
        groups: dict[tuple, list] = {}
        for u in units:
            if u.name in folders:
                groups.setdefault((u.magnification, u.repeat), []).append(folders[u.name])
        return [pooled_at(group, epoch) for group in groups.values()]

    def select(self, table: pd.DataFrame, criterion: pd.DataFrame,
               oof: pd.DataFrame | None) -> tuple[dict, list[str]]:
        """Write ``selection.json``; raises :class:`SweepFailed` when nothing can be
        selected."""
        from lncr.training.loop import versions

        rule = rule_text(self.cfg.sweep.validation)
        failures = complete_failures(table[table.status != "skipped"])
        lines = failure_lines(failures)
        dropped = left_out(table, criterion)
        scored = criterion[(criterion.status == "done") & criterion.val_auc.notna()]
        if scored.empty:
            why = [f"{k}: {v['reason']}" for k, v in dropped.items()] + lines
            atomic_write_json(self.layout.selection, {
                "status": "failed", "failures": failures, "failure_lines": lines,
                "left_out": dropped, "rule": rule, "study": self.study.source["study"],
                "versions": versions()})
            raise SweepFailed("no configuration could be scored: nothing to select from. "
                              f"{remedy(self.cfg.sweep.validation)}\n  " + "\n  ".join(why))
        selection = select(scored, self.cfg.training, rule)
        unselected = self.fill_unscored_stains(selection, dropped)
        selection.update({
            "status": "incomplete" if lines else ("partial" if dropped else "complete"),
            "validation": self.protocol(),
            "failures": failures, "failure_lines": lines, "left_out": dropped,
            "unselected_stains": unselected,
            "stability": stability(criterion, lambda part: select(part, self.cfg.training,
                                                                  rule), oof),
            "units": {s: int((table.status == s).sum()) for s in
                      ("done", "failed", "stopped", "skipped", "pending")},
            "early_stopping": self.compute_saved(table),
            **self.study.source, "versions": versions()})
        atomic_write_json(self.layout.selection, selection)
        return selection, lines

    def protocol(self) -> dict:
        sw = self.cfg.sweep
        out = {"method": sw.validation, "repeats": sw.repeats}
        if sw.validation == "kfold":
            out.update(folds=sw.folds, by_site=sw.fold_by_site)
        else:
            out.update(resplit=sw.resplit)
        return out

    def fill_unscored_stains(self, selection: dict, dropped: dict[str, dict]
                             ) -> dict[str, str]:
        """Swept stains the selection could not score at any magnification: given the grid's
        only architecture when it has one (no choice to make), else left without a model.
        Returns the stains left without an architecture, with the reason."""
        archs = self.cfg.sweep.architectures
        unselected = {}
        for stain in sweep_stains(self.cfg):
            if stain in selection["architectures"]:
                continue
            why = "; ".join(f"{mag}: {d['reason']}" for mag, d in
                            ((d["magnification"], d) for d in dropped.values()
                             if d["stain"] == stain)) or "no unit scored"
            if len(archs) == 1:
                selection["architectures"][stain] = archs[0]
                selection["decided_by"]["architecture"][stain] = (
                    f"the grid's only architecture; no {stain} unit could be scored ({why})")
            else:
                unselected[stain] = f"no architecture could be chosen: {why}"
        return unselected

    def compute_saved(self, table: pd.DataFrame) -> dict:
        sw = self.cfg.sweep
        full = len(table) * self.epochs
        stopped = table[table.status == "stopped"]
        saved = int((self.epochs - stopped.epochs_trained).sum())
        return {"method": sw.early_stopping, "rungs": self.rungs,
                "halving_rate": sw.halving_rate,
                "epochs_trained": int(table.epochs_trained.sum()), "epochs_full_grid": full,
                "epochs_saved": saved, "compute_saved": saved / full if full else 0.0}

    def train_final(self, selection: dict) -> pd.DataFrame:
        """Train (or reuse) the final models (and with k-fold their fold models); write
        ``final/models.csv``, ``final/folds.csv`` and ``final.json``."""
        from lncr.training.loop import versions

        cfg = self.cfg
        self.layout.final_dir.mkdir(parents=True, exist_ok=True)
        epochs = cfg.training.epochs
        # The sweep's repeat 0 of a configuration is the final model (or fold model) when it
        # was trained the same way: the same epochs, and not frozen for the grid only.
        same = self.epochs == epochs and (not self.frozen
                                          or cfg.training.backbone_lr_factor == 0)
        root = self.runs_root if same else self.layout.final_runs
        units = final_units(cfg, selection) + fold_units(cfg, selection)
        book = _Book(self.layout.final_units, units, cfg.output_dir)
        todo = self.skip_infeasible(units, book, final=True)
        results = {u.name: book.rows[u.name] for u in units}
        results.update(_run_units(todo, self.tasks(root, epochs), epochs, book, self.executor,
                                  self.progress))
        folds = fold_table(results)
        rows = [final_row(u, results[u.name]) for u in units if u.fold is None]
        if cfg.sweep.final_ensemble == "folds":
            rows = ensemble_rows(folds)
        table = pd.DataFrame(rows + unselected_rows(cfg, selection))
        if folds is not None:
            table = with_oof_auc(table, folds)
            self.layout.write_final_folds(folds)
        else:  # a study that used k-fold before: its fold models no longer apply
            self.layout.final_folds.unlink(missing_ok=True)
        self.layout.write_final_models(table)
        atomic_write_json(self.layout.final_record, {
            "selection": stored(self.layout.selection, cfg.output_dir),
            "architectures": selection["architectures"], "bag_size": selection["bag_size"],
            "epochs": epochs, "seed": cfg.training.seed, "validation": self.protocol(),
            "final_ensemble": cfg.sweep.final_ensemble if cfg.sweep.validation == "kfold"
            else None,
            "runs_root": stored(root, cfg.output_dir), **self.study.source,
            "rule": selection["rule"], "versions": versions()})
        return table
