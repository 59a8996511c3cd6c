"""``lncr sweep``: run the grid, choose the final configuration, train the final models.

Folder ``<output_dir>/sweep/``:

- ``sweep.json`` — the grid, the settings, the executor, timings and package versions;
- ``runs/<stain>/<mag>/<arch>-b<bag>-s<seed>[-split<r>]/`` — one training run per unit;
- ``splits/split<r>.csv`` — each repeat's own split (with ``sweep.resplit``);
- ``units.csv`` — one row per unit: status (``done``, ``failed``, ``stopped`` by successive
  halving, ``pending``), epochs trained, last-epoch validation AUC/loss, seconds, error;
- ``failures/<unit>.txt`` — the traceback of each failed unit;
- ``summary.csv`` — per stain × magnification × architecture × bag size: mean ± s.d. and
  every repeat's validation AUC and loss (:func:`lncr.sweep.selection.summary_table`);
- ``selection.json`` — the chosen architecture per stain and bag size, the rule, the evidence
  and, with early stopping, the compute it saved.

Final models go to ``<output_dir>/final/``: ``models.csv`` (one row per stain × magnification:
configuration, run folder, status) and ``final.json``. A final model is the selected
configuration trained with ``training.seed`` on the study's recorded split for
``training.epochs``; when the sweep already trained exactly that run (its repeat 0 with the
same epochs), the sweep's run is used rather than trained again.

Re-running resumes: finished units are read from their folders without starting a worker,
interrupted ones continue from their last checkpoint, and failed ones are tried again.
"""

from __future__ import annotations

import math
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
from lncr.study.config import StudyConfig
from lncr.study.validate import Study
from lncr.sweep.executors import Executor
from lncr.sweep.grid import Unit, build_grid, sweep_stains, write_repeat_splits
from lncr.sweep.halving import halving_rungs, promote
from lncr.sweep.selection import RULE, complete_failures, failure_lines, select, summary_table
from lncr.sweep.unit import UnitTask, result_row

UNIT_COLUMNS = ["stain", "magnification", "architecture", "bag_size", "repeat", "seed", "split",
                "status", "epochs_trained", "val_auc", "val_loss", "train_auc", "train_loss",
                "best_val_auc", "seconds", "folder", "error", "val_auc_note"]


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
                     "folder": "", "error": ""} for u in units}
        self.seconds = 0.0

    def record(self, name: str, row: dict, write: bool = True) -> None:
        t0 = time.perf_counter()
        self.rows[name].update({k: row[k] for k in UNIT_COLUMNS if k in row})
        if row.get("status") == "failed":
            failures = self.folder / "failures"
            failures.mkdir(exist_ok=True)
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
               book: _Book, executor_factory, progress) -> dict[str, dict]:
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
        for done, row in enumerate(executor_factory().map(tasks), start=1):
            name = Unit.from_row(row).name
            results[name] = row
            book.record(name, row)
            if progress:
                pace = (time.perf_counter() - started) / done
                progress({**row, "done": done, "total": len(tasks),
                          "eta_s": pace * (len(tasks) - done)})
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
            from lncr.study.config import registered
            from lncr.sweep.executor_registry import EXECUTORS

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
        from lncr.training.entries import unusable_patients

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
            summary = summary_table(table)
            write_table(self.layout.sweep_summary, summary)
            selection, lines = self.select(table)
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

    def run_grid(self) -> _Book:
        """Every unit to the last rung, stopping the configurations halving drops."""
        units = build_grid(self.cfg)
        book = _Book(self.layout.sweep_units, units, self.cfg.output_dir)
        alive = list(units)
        for i, rung in enumerate(self.rungs):
            results = _run_units(alive, self.tasks(self.runs_root, self.epochs, self.frozen),
                                 rung, book, self.executor, self.progress)
            if i < len(self.rungs) - 1:
                alive, stopped = promote(alive, results, rung, self.cfg.sweep.halving_rate,
                                         self.size)
                for u in stopped:
                    book.record(u.name, {**results[u.name], "status": "stopped"
                                         if results[u.name]["status"] != "failed" else "failed"})
        return book

    def select(self, table: pd.DataFrame) -> tuple[dict, list[str]]:
        """Write ``selection.json``; raises :class:`SweepFailed` when no unit finished."""
        from lncr.training.loop import versions

        failures = complete_failures(table)
        lines = failure_lines(failures)
        if not (table.status == "done").any():
            atomic_write_json(self.layout.selection, {
                "status": "failed", "failures": failures, "failure_lines": lines,
                "rule": RULE, "study": self.study.source["study"], "versions": versions()})
            raise SweepFailed("no sweep unit finished every epoch: nothing to select from "
                              f"(see {self.folder / 'failures'}):\n  " + "\n  ".join(lines))
        selection = select(table, self.cfg.training)
        selection.update({
            "status": "incomplete" if lines else "complete",
            "failures": failures, "failure_lines": lines,
            "units": {s: int((table.status == s).sum()) for s in
                      ("done", "failed", "stopped", "pending")},
            "early_stopping": self.compute_saved(table),
            **self.study.source, "versions": versions()})
        atomic_write_json(self.layout.selection, selection)
        return selection, lines

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
        """Train (or reuse) the final models; write ``final/models.csv`` and ``final.json``."""
        from lncr.training.loop import versions

        cfg = self.cfg
        folder = self.layout.final_dir
        folder.mkdir(parents=True, exist_ok=True)
        epochs = cfg.training.epochs
        # The sweep's repeat 0 of a configuration is the final model when it was trained the
        # same way: the same epochs, and not frozen for the grid only.
        same = self.epochs == epochs and (not self.frozen
                                          or cfg.training.backbone_lr_factor == 0)
        root = self.runs_root if same else self.layout.final_runs
        units = final_units(cfg, selection)
        book = _Book(self.layout.final_units, units, cfg.output_dir)
        results = _run_units(units, self.tasks(root, epochs), epochs, book, self.executor,
                             self.progress)
        rows = [{"stain": u.stain, "magnification": u.magnification,
                 "architecture": u.architecture, "bag_size": u.bag_size, "seed": u.seed,
                 "status": results[u.name]["status"], "val_auc": results[u.name]["val_auc"],
                 "folder": results[u.name]["folder"],
                 "error": results[u.name].get("error", "")} for u in units]
        table = pd.DataFrame(rows)
        self.layout.write_final_models(table)
        atomic_write_json(self.layout.final_record, {
            "selection": stored(self.layout.selection, cfg.output_dir),
            "architectures": selection["architectures"], "bag_size": selection["bag_size"],
            "epochs": epochs, "seed": cfg.training.seed,
            "runs_root": stored(root, cfg.output_dir), **self.study.source, "rule": RULE,
            "versions": versions()})
        return table


def final_units(cfg: StudyConfig, selection: dict) -> list[Unit]:
    """The selected configuration for every stain (with a selection) × every magnification."""
    return [Unit.of(stain, mag, selection["architectures"][stain], selection["bag_size"], 0,
                 cfg.training.seed)
            for stain in sweep_stains(cfg) if stain in selection["architectures"]
            for mag in cfg.magnification_labels()]
