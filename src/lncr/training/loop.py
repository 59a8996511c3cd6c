"""One training run: (stain, magnification, architecture, bag size, seed) → a run folder.

Folder ``<output_dir>/runs/<stain>/<mag>/<arch>-b<bag>-s<seed>/`` holds ``config.json`` (the
effective settings, input geometry, channel statistics, precision, package versions),
``split.csv`` (the slides and their sides), ``metrics.csv`` (one row per epoch), TensorBoard
events (``tb/``), and the checkpoints ``last.pt`` (model, optimiser, scheduler, gradient
scaler, RNG state, position in the epoch and the epoch's training outputs so far; written at
the end of every epoch and every ``checkpoint_every`` steps) and ``best.pt`` (highest
validation AUC, ties to the lower validation loss). ``done.json`` marks a finished run.

As in the authors' script, the training AUC, loss and the Youden threshold come from the
probabilities the model gave the training bags during the epoch; validation uses the
development ``val`` slides (up to ``eval_tiles`` tiles each, chosen deterministically).

Reproducibility: bags, crops, flips and jitter depend only on ``(seed, epoch, slide)`` and the
epoch's order on ``(seed, epoch)``; dropout's RNG state is checkpointed. A run resumed from
``last.pt`` — at an epoch boundary or mid-epoch — reaches exactly the weights of an
uninterrupted run on the CPU (tested), whatever the number of loader workers.

Under ``torchrun`` each rank trains on a disjoint share of the epoch's slides
(:func:`lncr.training.bags.rank_share`) in DistributedDataParallel; uneven shares are handled
by DDP's join; outputs and validation predictions are gathered on every rank, and rank 0
writes the files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.distributed.algorithms.join import Join
from torch.utils.data import DataLoader

from lncr import __version__
from lncr.errors import WorkFailed
from lncr.fileio import atomic_write_json, atomic_write_text, partial_path
from lncr.models.mil import AttentionMIL, build_mil, freeze_batch_norm
from lncr.study.config import TrainingSettings
from lncr.training.bags import BagDataset, EpochSampler, SlideEntry, collate_bags, eval_indices
from lncr.training.distributed import Context, resolve_device
from lncr.training.inputs import DeviceInput, input_geometry, preset_stats, tile_channel_stats
from lncr.training.metrics import accuracy, auc, youden_threshold

#: Settings that do not change what a run computes (a resume may change them).
NEUTRAL_SETTINGS = ("loader_workers", "checkpoint_every")


@dataclass(frozen=True)
class RunSpec:
    stain: str
    magnification: str
    architecture: str
    bag_size: int
    seed: int
    split: str = ""  # "" = the study's recorded split; else a named re-drawn split (sweeps)

    def folder(self, runs_root: Path) -> Path:
        name = f"{self.architecture.replace(':', '-')}-b{self.bag_size}-s{self.seed}"
        return (Path(runs_root) / self.stain / self.magnification
                / (f"{name}-{self.split}" if self.split else name))


def versions() -> dict[str, str]:
    import torchvision

    return {"lncr": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__}


def channel_stats(entries: list[SlideEntry], tiles_per_slide: int = 16) -> tuple[list, list]:
    """Per-channel mean and s.d. (0–1 scale) of training tiles, spread over each slide."""
    ds = BagDataset(entries, bag_size=1, train=False)
    return tile_channel_stats([t for i, e in enumerate(entries)
                               for t in ds.tiles(i, eval_indices(e.n_tiles, tiles_per_slide))])


def lr_lambda(settings: TrainingSettings) -> Callable[[int], float]:
    """Linear warm-up for ``warmup_epochs``, then cosine annealing to ``min_learning_rate``."""
    floor = settings.min_learning_rate / settings.learning_rate

    def factor(epoch: int) -> float:
        if epoch < settings.warmup_epochs:
            return (epoch + 1) / settings.warmup_epochs
        span = max(1, settings.epochs - settings.warmup_epochs)
        progress = (epoch - settings.warmup_epochs) / span
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision type on CUDA (``auto``: bf16 where supported, else fp16); None = fp32.
    The CPU always trains in fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if precision == "fp16" else torch.bfloat16


def make_optimiser(model: torch.nn.Module, architecture: str, settings: TrainingSettings):
    """SGD (momentum, weight decay) or Adam for ViT, as published. The multi-tensor
    (``foreach``) update is asked for explicitly: torch only picks it by itself on CUDA, and
    the per-tensor loop costs as much as the backward pass on a CPU."""
    kind = settings.optimiser
    params = parameter_groups(model, settings)
    if kind == "adam" or (kind == "auto" and "vit" in architecture):
        return torch.optim.Adam(params, lr=settings.learning_rate,
                                weight_decay=settings.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=settings.learning_rate,
                           momentum=settings.momentum, weight_decay=settings.weight_decay,
                           foreach=True)


def parameter_groups(model: AttentionMIL, settings: TrainingSettings) -> list[dict]:
    """One group at the learning rate, or — with ``backbone_lr_factor`` ≠ 1 — the backbone at
    ``learning_rate × factor`` and the rest (projection, transformer, attention, classifier)
    at ``learning_rate``. A factor of 0 freezes the backbone (no gradients are computed
    for it)."""
    factor = settings.backbone_lr_factor
    if factor == 1:
        return [{"params": list(model.parameters())}]
    backbone = model.encoder.backbone_parameters()
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if factor == 0:
        for p in backbone:
            p.requires_grad_(False)
        return [{"params": rest}]
    return [{"params": backbone, "lr": settings.learning_rate * factor}, {"params": rest}]


def build_model(settings: TrainingSettings, weights=None) -> AttentionMIL:
    """The run's bag model from its settings."""
    return build_mil(settings.architecture, settings.embedding_dim, settings.transformer_layers,
                     settings.transformer_heads, weights, settings.feedforward_dim,
                     settings.dropout)


def loader(dataset: BagDataset, sampler, batch_size: int, workers: int,
           device: torch.device) -> DataLoader:
    """Bags decoded in ``workers`` processes (0: in this process). The loader gets its own
    generator: drawing worker seeds from torch's global RNG would shift dropout's random
    stream by the number of loaders started, and break exact resumes."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_bags, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0, generator=torch.Generator())


def _save(obj, path: Path) -> None:
    tmp = partial_path(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, inputs: DeviceInput, ctx: Context,
             amp: torch.dtype | None) -> list[tuple[int, float, float]]:
    """(slide, probability, loss) per bag of this rank's ``batches``, gathered from all
    ranks."""
    was_training = model.training
    model.eval()
    mine = []
    for bags, _, labels, slides in batches:
        with torch.autocast(inputs.device.type, dtype=amp, enabled=amp is not None):
            logits, _ = model(inputs(bags))
        logits = logits.float()
        losses = F.binary_cross_entropy_with_logits(logits, labels.to(logits.device),
                                                    reduction="none")
        mine += [(int(s), float(p), float(loss))
                 for s, p, loss in zip(slides, torch.sigmoid(logits), losses)]
    model.train(was_training)
    return [row for part in ctx.gather(mine) for row in part]


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _epoch_seed(seed: int, epoch: int, rank: int, step: int = 0) -> int:
    return int(np.random.default_rng([seed, epoch, rank, step]).integers(2 ** 62))


def _portable_source(source: dict | None, folder: Path) -> dict | None:
    """The run's study file relative to the run folder when the run lies inside the study's
    folder, so a copied study's runs point at the copy (see lncr.paths)."""
    if not source or not source.get("study"):
        return source
    study = Path(os.path.abspath(source["study"]))
    run = Path(os.path.abspath(folder))
    if study.parent in run.parents:
        return {**source, "study": Path(os.path.relpath(study, run)).as_posix()}
    return source


class TrainingDiverged(WorkFailed):
    """The training loss became NaN or infinite: the run stops unfinished (no ``done.json``)."""


def train_run(spec: RunSpec, entries: list[SlideEntry], settings: TrainingSettings,
              runs_root: Path, tile_size: int, weights=None, device: str | Context = "cpu",
              force: bool = False, stop_after: Callable[[int, int | None], bool] | None = None,
              source: dict | None = None) -> Path:
    """Train (or resume, or skip when finished) one run; returns its folder.

    ``entries`` are the stain × magnification's slides with their sides (``train``/``val``);
    external slides are ignored. ``device`` is a device name or a :class:`Context` from
    :func:`lncr.training.distributed.setup`. ``stop_after(epoch, step)`` is asked after every
    checkpoint (``step`` is None at the end of an epoch); True ends the call there, as an
    interruption would. ``source`` (the study file and overrides) is recorded for
    ``lncr predict``.
    """
    ctx = device if isinstance(device, Context) else Context(device=resolve_device(device))
    dev = ctx.device
    folder = spec.folder(runs_root)
    train = [e for e in entries if e.split == "train"]
    val = [e for e in entries if e.split == "val"]
    if not train:
        raise ValueError(f"no training slides for {spec.stain} {spec.magnification}")
    if (folder / "done.json").exists() and not force:
        return folder
    settings = settings.model_copy(update={"bag_size": spec.bag_size, "seed": spec.seed,
                                           "architecture": spec.architecture})
    if weights is None and settings.backbone_lr_factor != 1:  # only pretrained backbones
        settings = settings.model_copy(update={"backbone_lr_factor": 1.0})
    geometry = input_geometry(settings, tile_size)
    last = folder / "last.pt"
    if ctx.main:
        folder.mkdir(parents=True, exist_ok=True)
        if force:
            for name in ("last.pt", "best.pt", "done.json", "metrics.csv"):
                (folder / name).unlink(missing_ok=True)
    ctx.barrier()
    old = json.loads((folder / "config.json").read_text()) if last.exists() else None
    if old is not None:  # a resumed run keeps the statistics it started with
        stats = old["channel_mean"], old["channel_std"]
    else:
        stats = preset_stats(settings.channel_stats, spec.stain) or channel_stats(train)
    amp = autocast_dtype(settings.precision, dev)
    source = _portable_source(source, folder)
    config = {"spec": asdict(spec), "settings": settings.model_dump(mode="json"),
              "tile_size": tile_size, "geometry": asdict(geometry),
              "channel_mean": stats[0], "channel_std": stats[1],
              "precision": str(amp).replace("torch.", "") if amp else "fp32",
              "device": dev.type, "world_size": ctx.world,
              "weights": str(weights) if weights is not None else None,
              "source": source, "versions": versions()}
    if old is not None:

        def key(c: dict) -> dict:
            s = {k: v for k, v in c["settings"].items() if k not in NEUTRAL_SETTINGS}
            return {"spec": c["spec"], "settings": s, "tile_size": c["tile_size"]}

        if key(old) != key(config):
            raise ValueError(f"{folder} was started with other settings; use --force to restart")
    if ctx.main:
        atomic_write_json(folder / "config.json", config)
        atomic_write_text(folder / "split.csv", pd.DataFrame(
            [(e.patient_id, e.split, e.label, e.n_tiles, e.store) for e in train + val],
            columns=["patient_id", "split", "label", "tiles", "store"]).to_csv(index=False))

    torch.manual_seed(spec.seed)
    model = build_model(settings, weights).to(dev)
    optimiser = make_optimiser(model, spec.architecture, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_lambda(settings))
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)
    rows: list[dict] = []
    start_epoch, start_step, prior, best_key, rng = 0, 0, [], None, None
    if last.exists():
        state = torch.load(last, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        prior = [tuple(o) for o in state["outputs"]]
        best_key = tuple(state["best_key"]) if state["best_key"] is not None else None
        rng = state["rng"] if start_step else None
        if (folder / "metrics.csv").exists():
            rows = pd.read_csv(folder / "metrics.csv").to_dict("records")[:start_epoch]
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    inputs = DeviceInput(geometry, stats[0], stats[1], dev)
    jitter = settings.colour_jitter if settings.augment else 0.0
    train_ds = BagDataset(train, settings.bag_size, train=True, seed=spec.seed,
                          crop=geometry.crop, augment=settings.augment, jitter=jitter)
    sampler = EpochSampler(len(train), spec.seed, ctx.rank, ctx.world)
    bps = settings.bags_per_step
    train_loader = loader(train_ds, sampler, bps, settings.loader_workers, dev)
    val_ds = BagDataset(val, 1, train=False, eval_tiles=settings.eval_tiles, crop=geometry.crop)
    val_loader = loader(val_ds, list(range(len(val)))[ctx.rank::ctx.world], 1,
                        settings.loader_workers, dev) if val else None
    writer = None
    if ctx.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(folder / "tb"), purge_step=start_epoch)
    labels_train = np.array([e.label for e in train])
    labels_val = np.array([e.label for e in val])

    def checkpoint(epoch: int, step: int, outputs: list) -> None:
        if ctx.main:
            _save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                   "epoch": epoch, "step": step, "outputs": [list(o) for o in outputs],
                   "best_key": list(best_key) if best_key is not None else None,
                   "rng": _rng_state(dev)}, last)

    try:
        for epoch in range(start_epoch, settings.epochs):
            step = start_step if epoch == start_epoch else 0
            if rng is not None and epoch == start_epoch and ctx.main:
                _set_rng_state(rng, dev)
            else:
                torch.manual_seed(_epoch_seed(spec.seed, epoch, ctx.rank, step))
            if step == 0:
                prior = []
            sampler.set_epoch(epoch, step * bps)
            steps_of = [-(-len(sampler.share(epoch, r)) // bps) for r in range(ctx.world)]
            net.train()
            if settings.batch_norm == "frozen":
                freeze_batch_norm(net)
            mine: list[tuple] = []
            join = (Join([net]) if ctx.distributed
                    else contextlib.nullcontext())
            with join:
                for bags, factors, labels, slides in train_loader:
                    x = inputs(bags, factors if jitter else None)
                    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                        logits, _ = net(x)
                    logits = logits.float()
                    losses = F.binary_cross_entropy_with_logits(
                        logits, labels.to(dev), reduction="none")
                    optimiser.zero_grad(set_to_none=True)
                    scaler.scale(losses.mean()).backward()
                    scaler.step(optimiser)
                    scaler.update()
                    mine += [(int(s), float(p), float(loss)) for s, p, loss in
                             zip(slides, torch.sigmoid(logits.detach()), losses.detach())]
                    step += 1
                    every = settings.checkpoint_every
                    if every and step % every == 0 and step < min(steps_of):
                        prior += [o for part in ctx.gather(mine) for o in part]
                        mine = []
                        checkpoint(epoch, step, prior)
                        if stop_after is not None and stop_after(epoch, step):
                            return folder
            scheduler.step()
            outputs = prior + [o for part in ctx.gather(mine) for o in part]
            seen = [s for s, _, _ in outputs]
            p_train = np.zeros(len(train))
            l_train = np.zeros(len(train))
            for s, p, loss in outputs:
                p_train[s], l_train[s] = p, loss
            threshold = youden_threshold(labels_train, p_train)
            row = {"epoch": epoch, "lr": optimiser.param_groups[0]["lr"],
                   "train_loss": float(l_train.mean()), "train_auc": auc(labels_train, p_train),
                   "train_accuracy": accuracy(labels_train, p_train, threshold),
                   "threshold": threshold, "val_loss": float("nan"), "val_auc": float("nan"),
                   "val_accuracy": float("nan"), "slides_seen": len(set(seen)),
                   "bags": len(seen)}
            ctx.broadcast_buffers(model)
            if val_loader is not None:
                res = {s: (p, loss) for s, p, loss in
                       evaluate(model, val_loader, inputs, ctx, amp)}
                p_val = np.array([res[i][0] for i in range(len(val))])
                l_val = np.array([res[i][1] for i in range(len(val))])
                row.update(val_loss=float(l_val.mean()), val_auc=auc(labels_val, p_val),
                           val_accuracy=accuracy(labels_val, p_val, threshold))
            rows.append(row)
            if not math.isfinite(row["train_loss"]):
                if ctx.main:  # keep the evidence; no checkpoint of the diverged weights
                    atomic_write_text(folder / "metrics.csv",
                                      pd.DataFrame(rows).to_csv(index=False))
                raise TrainingDiverged(
                    f"{folder}: the training loss became {row['train_loss']} in epoch {epoch}; "
                    f"the run diverged and is not finished. Lower training.learning_rate "
                    f"(now {settings.learning_rate}) or start from pretrained weights, then "
                    "re-run with --force (metrics.csv shows the epochs before)")
            score = row["val_auc"] if not math.isnan(row["val_auc"]) else row["train_auc"]
            key = (score if not math.isnan(score) else -1.0,
                   -(row["val_loss"] if not math.isnan(row["val_loss"]) else row["train_loss"]))
            improved = best_key is None or key > best_key
            if improved:
                best_key = key
            if ctx.main:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k.replace("_", "/", 1), v, epoch)
                atomic_write_text(folder / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))
                if improved:
                    _save({"model": model.state_dict(), "epoch": epoch, "metrics": row},
                          folder / "best.pt")
            checkpoint(epoch + 1, 0, [])
            if stop_after is not None and stop_after(epoch, None):
                return folder
        if ctx.main:
            atomic_write_json(folder / "done.json", {
                "epochs": settings.epochs, "best_val_auc": best_key[0] if best_key else None,
                "best_epoch": int(torch.load(folder / "best.pt", weights_only=True)["epoch"])})
            # A finished run needs no optimiser state: keep the final weights only (a third
            # of the size with Adam). After done.json, so a kill in between loses nothing.
            _save({"model": model.state_dict(), "epoch": settings.epochs, "step": 0,
                   "complete": True}, last)
        ctx.barrier()
    finally:
        if writer is not None:
            writer.close()
    return folder


def study_entries(study_yaml: str | Path, stain: str, magnification: str,
                  overrides: list[str] | None = None):
    """The study's config and the slides of one stain × magnification with their sides, from
    the recorded split (``lncr validate``) and the tile index (``lncr tile``)."""
    from lncr.study.validate import usable_study
    from lncr.training.bags import slide_entries

    study = usable_study(study_yaml, overrides)
    cfg = study.config
    split_csv = cfg.output_dir / "study" / "split.csv"
    if not split_csv.exists():
        raise ValueError(f"no recorded split at {split_csv}: run `lncr validate {study_yaml}`")
    tiles = cfg.output_dir / "tiles"
    if not (tiles / "index.csv").exists():
        raise ValueError(f"no tiles in {tiles}: run `lncr tile {study_yaml}`")
    split = pd.read_csv(split_csv, dtype={"patient_id": str})
    entries = slide_entries(tiles, study.patients, split, stain, magnification)
    return cfg, entries
