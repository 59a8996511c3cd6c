"""The training of one run, step by step: prepare the folder, build, restore, train an epoch,
validate, record, checkpoint, finish. :func:`train_run` drives it; the docstring of
:mod:`lncr.training.loop` describes the run folder, resumption and distributed training.

The order of every random draw is part of the contract (a resumed run reaches the weights of
an uninterrupted one exactly): the model is built right after ``torch.manual_seed(seed)``,
each epoch reseeds from ``(seed, epoch, rank, step)`` unless a mid-epoch checkpoint restores
the RNG state, and loaders draw from generators of their own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.distributed.algorithms.join import Join

from lncr.data.bags import BagDataset, EpochSampler, SlideEntry
from lncr.data.distributed import Context, resolve_device
from lncr.data.inputs import DeviceInput, input_geometry, run_stats
from lncr.data.precision import autocast_dtype, precision_name
from lncr.errors import BadInput
from lncr.fileio import (
    DamagedFile,
    atomic_save_torch,
    atomic_write_json,
    atomic_write_text,
    read_torch,
)
from lncr.models.mil import FeatureModel, freeze_batch_norm
from lncr.study.config import TrainingSettings
from lncr.training.loop import (
    RunSpec,
    TrainingDiverged,
    build_model,
    evaluate,
    loader,
    lr_lambda,
    make_optimiser,
    versions,
)
from lncr.training.metrics import accuracy, auc, youden_threshold
from lncr.training.run_state import (
    best_key,
    epoch_seed,
    portable_source,
    resume_key,
    rng_state,
    set_rng_state,
)

#: Every epoch's validation probability and loss per slide (the out-of-fold predictions of
#: ``sweep.validation: kfold`` are pooled from them).
VAL_PREDICTIONS = "val_predictions.csv"
VAL_COLUMNS = ["epoch", "patient_id", "label", "probability", "loss"]


class Stopped(Exception):
    """``stop_after`` asked to end the call at a checkpoint (an interruption on purpose)."""


class Trainer:
    """One run of :class:`RunSpec` on ``entries``; see :func:`lncr.training.loop.train_run`."""

    def __init__(self, spec: RunSpec, entries: list[SlideEntry], settings: TrainingSettings,
                 runs_root: Path, tile_size: int, weights=None, device: str | Context = "cpu",
                 force: bool = False, source: dict | None = None,
                 excluded: list[dict] | None = None, features=None):
        self.ctx = device if isinstance(device, Context) else Context(
            device=resolve_device(device))
        self.dev = self.ctx.device
        self.spec, self.tile_size, self.weights, self.force = spec, tile_size, weights, force
        self.excluded = list(excluded or [])  # patients without tiles here (recorded)
        self.folder = spec.folder(runs_root)
        self.last = self.folder / "last.pt"
        self.train = [e for e in entries if e.split == "train"]
        self.val = [e for e in entries if e.split == "val"]
        if not self.train:
            raise BadInput(f"no training slides for {spec.stain} {spec.magnification}")
        settings = settings.model_copy(update={"bag_size": spec.bag_size, "seed": spec.seed,
                                               "architecture": spec.architecture})
        if weights is None and settings.backbone_lr_factor != 1:  # only pretrained backbones
            settings = settings.model_copy(update={"backbone_lr_factor": 1.0})
        self.settings = settings
        # A frozen pretrained backbone trains from cached features (lncr.features.embed).
        self.cache = features if (features is not None and features.settings.use == "auto"
                                  and weights is not None
                                  and settings.backbone_lr_factor == 0) else None
        self.fspec, self.feature_dim = None, None
        self.geometry = input_geometry(settings, tile_size)
        self.amp = autocast_dtype(settings.precision, self.dev)
        self.source = portable_source(source, self.folder)
        self.rows: list[dict] = []
        self.val_rows: list[dict] = []  # every epoch's validation prediction per slide
        self.start_epoch, self.start_step, self.prior = 0, 0, []
        self.best_key: tuple | None = None
        self.rng = None
        self.writer = None
        self.on_epoch: Callable[[dict], None] | None = None  # the metrics row of each epoch
        self.resume_state: dict | None = None  # last.pt, read once by set_aside_damaged
        self.on_step: Callable[[int, int, int], None] | None = None  # (epoch, step, steps)

    @property
    def finished(self) -> bool:
        return (self.folder / "done.json").exists()

    def run(self, stop_after: Callable[[int, int | None], bool] | None = None) -> Path:
        """Train to the last epoch (or until ``stop_after`` says so); the run folder."""
        if self.finished and not self.force:
            return self.folder
        self.check_sides()
        with self.lock():
            return self._train(stop_after)

    def check_sides(self) -> None:
        """Both outcomes on the training side (and named patients without tiles)."""
        from lncr.data.entries import check_sides

        check_sides(self.train + self.val, self.excluded,
                    f"{self.spec.stain} {self.spec.magnification}",
                    self.settings.min_patients_per_outcome)

    def lock(self):
        """The run folder's lock (held by the main process only)."""
        from lncr.locks import output_lock

        return (output_lock(self.folder, "training run") if self.ctx.main
                else contextlib.nullcontext())

    def setup(self) -> None:
        """Everything before the first epoch: checks, statistics, model, folder, resume,
        loaders."""
        self.preflight()
        self.prepare()
        self.build()  # loads the weights: a --force run fails here before replacing anything
        self.write_folder()
        self.restore()
        self.start_loaders()

    def end_epoch(self, epoch: int, outputs: list[tuple], began: float) -> None:
        """Validate, record and checkpoint an epoch trained from ``began``."""
        row = self.validate(epoch, outputs)
        self.record(epoch, row)
        if self.on_epoch is not None and self.ctx.main:
            self.on_epoch({**row, "epochs": self.settings.epochs,
                           "seconds": time.perf_counter() - began})
        self.checkpoint(epoch + 1, 0, [])

    def _train(self, stop_after) -> Path:
        self.setup()
        try:
            for epoch in range(self.start_epoch, self.settings.epochs):
                began = time.perf_counter()
                self.end_epoch(epoch, self.train_epoch(epoch, stop_after), began)
                if stop_after is not None and stop_after(epoch, None):
                    return self.folder
            self.finish()
        except Stopped:
            return self.folder
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.folder

    def preflight(self) -> None:
        """Every tile store opens and was cut at this run's tile size (checked before anything
        in the run folder changes)."""
        from lncr.tiling.store import TileStore

        for e in self.train + self.val:
            with TileStore(e.store) as store:
                cut = store.meta.get("settings", {}).get("tile_size")
            if cut is not None and int(cut) != self.tile_size:
                raise BadInput(
                    f"the tiles of {e.patient_id} ({e.store}) are {cut} px but the settings say "
                    f"tiling.tile_size={self.tile_size}: drop the --set, or re-tile with "
                    f"`lncr tile --set tiling.tile_size={self.tile_size}` first")

    def set_aside_damaged(self) -> None:
        """An unfinished run whose ``last.pt`` cannot be read back (a copy cut short, a disk
        that failed) would fail on every resume: it is set aside as ``last.pt.damaged`` with
        the attempt's metrics, and the run starts again from epoch 0, with a warning."""
        if not (self.ctx.main and self.last.exists() and not self.force):
            return
        try:
            self.resume_state = read_torch(self.last, self.dev)
        except DamagedFile as exc:
            damaged = self.last.with_name("last.pt.damaged")
            os.replace(self.last, damaged)
            for name in ("best.pt", "metrics.csv", VAL_PREDICTIONS):
                (self.folder / name).unlink(missing_ok=True)
            warnings.warn(f"{exc}; set aside as {damaged}: {self.folder.name} trains again "
                          "from epoch 0", RuntimeWarning, stacklevel=2)

    def prepare(self) -> None:
        """The channel statistics; a resumed run must have been started with the same
        settings, and keeps the statistics it started with."""
        folder = self.folder
        self.set_aside_damaged()
        self.ctx.barrier()
        resuming = self.last.exists() and not self.force
        old = json.loads((folder / "config.json").read_text()) if resuming else None
        if old is not None:
            self.stats = old["channel_mean"], old["channel_std"]
        else:
            self.stats = run_stats(self.settings, self.spec.stain, self.train)
        if self.cache is not None:
            self.fspec = self.feature_spec()
        if old is not None and resume_key(old) != resume_key(self.config()):
            raise BadInput(f"{folder} was started with other settings; use --force to restart")
        if self.cache is not None and self.ctx.main:
            from lncr.features.embed import embed_entries

            embed_entries(self.cache, self.fspec, self.train + self.val, self.dev)
        self.ctx.barrier()
        if self.cache is not None:
            from lncr.features.store import FeatureFile

            with FeatureFile(self.cache.path(self.fspec, self.train[0])) as f:
                self.feature_dim = f.dim

    def feature_spec(self):
        """What the run's cached features are (:class:`lncr.features.spec.FeatureSpec`)."""
        from lncr.features.spec import run_features

        return run_features(self.settings, self.cache.settings, self.weights, self.geometry,
                            self.stats, precision_name(self.amp))

    def write_folder(self) -> None:
        """``config.json`` and ``split.csv`` (with ``--force``, after clearing the old run)."""
        ctx, folder = self.ctx, self.folder
        if ctx.main:
            folder.mkdir(parents=True, exist_ok=True)
            if self.force:
                for name in ("last.pt", "best.pt", "done.json", "metrics.csv", VAL_PREDICTIONS):
                    (folder / name).unlink(missing_ok=True)
            atomic_write_json(folder / "config.json", self.config())
            atomic_write_text(folder / "split.csv", pd.DataFrame(
                [(e.patient_id, e.split, e.label, e.n_tiles, e.store)
                 for e in self.train + self.val],
                columns=["patient_id", "split", "label", "tiles", "store"]).to_csv(index=False))
        ctx.barrier()

    def config(self) -> dict:
        """What ``config.json`` records: the settings, geometry, statistics and versions."""
        amp, ctx = self.amp, self.ctx
        return {"spec": asdict(self.spec), "settings": self.settings.model_dump(mode="json"),
                "tile_size": self.tile_size, "geometry": asdict(self.geometry),
                "channel_mean": self.stats[0], "channel_std": self.stats[1],
                "precision": precision_name(amp),
                "features": ({"id": self.fspec.feature_id(), "spec": self.fspec.key(),
                              "dim": self.feature_dim} if self.fspec is not None else None),
                "device": self.dev.type, "world_size": ctx.world,
                "weights": str(self.weights) if self.weights is not None else None,
                "source": self.source, "patients_without_tiles": self.excluded,
                "versions": versions()}

    def build(self) -> None:
        """Model, optimiser, schedule and gradient scaler (the model right after seeding)."""
        torch.manual_seed(self.spec.seed)
        self.model = build_model(self.settings, self.weights, self.feature_dim).to(self.dev)
        self.optimiser = make_optimiser(self.model, self.spec.architecture, self.settings)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimiser,
                                                           lr_lambda(self.settings))
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=self.amp == torch.float16)

    def restore(self) -> None:
        """Continue from ``last.pt`` when there is one (mid-epoch: with the RNG state)."""
        if not self.last.exists():
            return
        state = self.resume_state or read_torch(self.last, self.dev)
        self.resume_state = None
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step"])
        self.prior = [tuple(o) for o in state["outputs"]]
        self.best_key = tuple(state["best_key"]) if state["best_key"] is not None else None
        self.rng = state["rng"] if self.start_step else None
        if (self.folder / "metrics.csv").exists():
            self.rows = pd.read_csv(self.folder / "metrics.csv").to_dict(
                "records")[:self.start_epoch]
        if (self.folder / VAL_PREDICTIONS).exists():
            from lncr.layout import read_table

            kept = read_table(self.folder / VAL_PREDICTIONS)
            self.val_rows = kept[kept.epoch < self.start_epoch].to_dict("records")

    def start_loaders(self) -> None:
        """DDP wrapper, device input, bag loaders and the TensorBoard writer."""
        ctx, dev, s, spec = self.ctx, self.dev, self.settings, self.spec
        self.scorer = FeatureModel(self.model) if self.cache is not None else self.model
        self.net = self.scorer
        if ctx.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.scorer, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.jitter = s.colour_jitter if s.augment else 0.0
        train_ds, val_ds = self.datasets()
        self.sampler = EpochSampler(len(self.train), spec.seed, ctx.rank, ctx.world)
        self.train_loader = loader(train_ds, self.sampler, s.bags_per_step, s.loader_workers,
                                   dev)
        self.val_loader = loader(val_ds, list(range(len(self.val)))[ctx.rank::ctx.world], 1,
                                 s.loader_workers, dev) if self.val else None
        if ctx.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder / "tb"), purge_step=self.start_epoch)

    def datasets(self) -> tuple[BagDataset, BagDataset]:
        """Training and validation bags (and ``self.inputs``): tiles, or cached features."""
        s, seed, crop = self.settings, self.spec.seed, self.geometry.crop
        if self.cache is None:
            self.inputs = DeviceInput(self.geometry, self.stats[0], self.stats[1], self.dev)
            return (BagDataset(self.train, s.bag_size, train=True, seed=seed, crop=crop,
                               augment=s.augment, jitter=self.jitter),
                    BagDataset(self.val, 1, train=False, eval_tiles=s.eval_tiles, crop=crop))
        from lncr.features.bags import FeatureBagDataset, FeatureInput

        self.inputs = FeatureInput(self.dev)
        paths = {e: self.cache.path(self.fspec, e) for e in self.train + self.val}
        return (FeatureBagDataset(self.train, [paths[e] for e in self.train], s.bag_size,
                                  train=True, seed=seed, views=self.fspec.views),
                FeatureBagDataset(self.val, [paths[e] for e in self.val], 1, train=False,
                                  eval_tiles=s.eval_tiles))

    def train_epoch(self, epoch: int, stop_after) -> list[tuple]:
        """One epoch of optimiser steps; the (slide, probability, loss) of every bag."""
        ctx, s = self.ctx, self.settings
        step = self.start_step if epoch == self.start_epoch else 0
        if self.rng is not None and epoch == self.start_epoch and ctx.main:
            set_rng_state(self.rng, self.dev)
        else:
            torch.manual_seed(epoch_seed(self.spec.seed, epoch, ctx.rank, step))
        if step == 0:
            self.prior = []
        bps = s.bags_per_step
        self.sampler.set_epoch(epoch, step * bps)
        steps_of = [-(-len(self.sampler.share(epoch, r)) // bps) for r in range(ctx.world)]
        self.net.train()
        if s.batch_norm == "frozen":
            freeze_batch_norm(self.net)
        mine: list[tuple] = []
        with Join([self.net]) if ctx.distributed else contextlib.nullcontext():
            for bags, factors, labels, slides in self.train_loader:
                mine += self.step(bags, factors, labels, slides)
                step += 1
                if self.on_step is not None and ctx.main:
                    self.on_step(epoch, step, steps_of[ctx.rank])
                every = s.checkpoint_every
                if every and step % every == 0 and step < min(steps_of):
                    self.prior += [o for part in ctx.gather(mine) for o in part]
                    mine = []
                    self.checkpoint(epoch, step, self.prior)
                    if stop_after is not None and stop_after(epoch, step):
                        raise Stopped
        self.scheduler.step()
        return self.prior + [o for part in ctx.gather(mine) for o in part]

    def step(self, bags, factors, labels, slides) -> list[tuple]:
        """One optimiser step on a batch of bags."""
        dev, amp = self.dev, self.amp
        x = self.inputs(bags, factors if self.jitter else None)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits, _ = self.net(x)
        logits = logits.float()
        losses = F.binary_cross_entropy_with_logits(logits, labels.to(dev), reduction="none")
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(losses.mean()).backward()
        self.scaler.step(self.optimiser)
        self.scaler.update()
        return [(int(s), float(p), float(loss)) for s, p, loss in
                zip(slides, torch.sigmoid(logits.detach()), losses.detach())]

    def validate(self, epoch: int, outputs: list[tuple]) -> dict:
        """The epoch's metrics row: training figures from its bags, then validation."""
        train, val = self.train, self.val
        labels_train = np.array([e.label for e in train])
        seen = [s for s, _, _ in outputs]
        p_train, l_train = np.zeros(len(train)), np.zeros(len(train))
        for s, p, loss in outputs:
            p_train[s], l_train[s] = p, loss
        threshold = youden_threshold(labels_train, p_train)
        row = {"epoch": epoch, "lr": self.optimiser.param_groups[0]["lr"],
               "train_loss": float(l_train.mean()), "train_auc": auc(labels_train, p_train),
               "train_accuracy": accuracy(labels_train, p_train, threshold),
               "threshold": threshold, "val_loss": float("nan"), "val_auc": float("nan"),
               "val_accuracy": float("nan"), "slides_seen": len(set(seen)),
               "bags": len(seen)}
        self.ctx.broadcast_buffers(self.model)
        if self.val_loader is not None:
            labels_val = np.array([e.label for e in val])
            res = {s: (p, loss) for s, p, loss in
                   evaluate(self.scorer, self.val_loader, self.inputs, self.ctx, self.amp)}
            p_val = np.array([res[i][0] for i in range(len(val))])
            l_val = np.array([res[i][1] for i in range(len(val))])
            self.val_rows += [{"epoch": epoch, "patient_id": e.patient_id, "label": e.label,
                               "probability": float(p), "loss": float(loss)}
                              for e, p, loss in zip(val, p_val, l_val)]
            row.update(val_loss=float(l_val.mean()), val_auc=auc(labels_val, p_val),
                       val_accuracy=accuracy(labels_val, p_val, threshold))
        return row

    def record(self, epoch: int, row: dict) -> None:
        """Append the row to ``metrics.csv`` and TensorBoard; keep ``best.pt``; stop a run
        whose loss diverged."""
        self.rows.append(row)
        folder = self.folder
        if not math.isfinite(row["train_loss"]):
            if self.ctx.main:  # keep the evidence; no checkpoint of the diverged weights
                atomic_write_text(folder / "metrics.csv",
                                  pd.DataFrame(self.rows).to_csv(index=False))
            raise TrainingDiverged(
                f"{folder}: the training loss became {row['train_loss']} in epoch {epoch}; "
                f"the run diverged and is not finished. Lower training.learning_rate "
                f"(now {self.settings.learning_rate}) or start from pretrained weights, then "
                "re-run with --force (metrics.csv shows the epochs before)")
        key = best_key(row)
        improved = self.best_key is None or key > self.best_key
        if improved:
            self.best_key = key
        if self.ctx.main:
            for k, v in row.items():
                if k != "epoch":
                    self.writer.add_scalar(k.replace("_", "/", 1), v, epoch)
            atomic_write_text(folder / "metrics.csv", pd.DataFrame(self.rows).to_csv(index=False))
            if self.val_rows:
                atomic_write_text(folder / VAL_PREDICTIONS, pd.DataFrame(
                    self.val_rows, columns=VAL_COLUMNS).to_csv(index=False))
            if improved:
                atomic_save_torch({"model": self.model.state_dict(), "epoch": epoch, "metrics": row},
                                  folder / "best.pt")

    def checkpoint(self, epoch: int, step: int, outputs: list) -> None:
        """``last.pt``: everything a resume needs, at an epoch boundary or mid-epoch."""
        if self.ctx.main:
            atomic_save_torch({
                "model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "step": step, "outputs": [list(o) for o in outputs],
                "best_key": list(self.best_key) if self.best_key is not None else None,
                "rng": rng_state(self.dev)}, self.last)

    def finish(self) -> None:
        """``done.json``, then ``last.pt`` slimmed to the final weights."""
        if self.ctx.main:
            best = self.best_key
            atomic_write_json(self.folder / "done.json", {
                "epochs": self.settings.epochs, "best_val_auc": best[0] if best else None,
                "best_epoch": int(read_torch(self.folder / "best.pt")["epoch"])})
            # A finished run needs no optimiser state: keep the final weights only (a third
            # of the size with Adam). After done.json, so a kill in between loses nothing.
            atomic_save_torch({"model": self.model.state_dict(), "epoch": self.settings.epochs,
                               "step": 0, "complete": True}, self.last)
        self.ctx.barrier()


def train_run(spec: RunSpec, entries: list[SlideEntry], settings: TrainingSettings,
              runs_root: Path, tile_size: int, weights=None, device: str | Context = "cpu",
              force: bool = False, stop_after: Callable[[int, int | None], bool] | None = None,
              source: dict | None = None, excluded: list[dict] | None = None,
              features=None, on_epoch: Callable[[dict], None] | None = None,
              on_step: Callable[[int, int, int], None] | None = None) -> Path:
    """Train (or resume, or skip when finished) one run; returns its folder.

    ``entries`` are the stain × magnification's slides with their sides (``train``/``val``);
    external slides are ignored. ``device`` is a device name or a :class:`Context` from
    :func:`lncr.data.distributed.setup`. ``stop_after(epoch, step)`` is asked after every
    checkpoint (``step`` is None at the end of an epoch); True ends the call there, as an
    interruption would. ``source`` (the study file and overrides) is recorded for
    ``lncr predict``; ``excluded`` (the patients without tiles here,
    :func:`lncr.data.entries.unusable_patients`) is recorded, and named when the training
    or validation slides lose a label. ``features`` (a
    :class:`lncr.features.embed.FeatureCache`) trains a frozen pretrained backbone from cached
    features, embedding the slides first when needed. ``on_epoch`` gets each epoch's metrics
    row (with ``epochs`` and ``seconds``) on the main process, ``on_step(epoch, step, steps)``
    each optimiser step there. The work is
    :class:`Trainer`'s.
    """
    trainer = Trainer(spec, entries, settings, runs_root, tile_size, weights, device, force,
                      source, excluded, features)
    trainer.on_epoch, trainer.on_step = on_epoch, on_step
    return trainer.run(stop_after)
