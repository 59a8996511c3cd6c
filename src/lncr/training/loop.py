"""One training run: (stain, magnification, architecture, bag size, seed) → a run folder.

Folder ``<output_dir>/runs/<stain>/<mag>/<arch>-b<bag>-s<seed>/`` holds ``config.json`` (the
effective settings, normalisation statistics, package versions), ``split.csv`` (the slides
and their sides), ``metrics.csv`` (one row per epoch), TensorBoard events (``tb/``), and the
checkpoints ``last.pt`` (every epoch: model, optimiser, scheduler, epoch, RNG states) and
``best.pt`` (highest validation AUC; ties to the lower loss). ``done.json`` marks a finished
run.

Reproducibility: each epoch reseeds torch with ``(seed, epoch)`` and bags depend only on
``(seed, epoch, slide)``, so a run resumed from ``last.pt`` reaches exactly the weights of an
uninterrupted run on the CPU (tested).

Not yet here (issue 4): ``lncr predict``, DataLoader workers, DDP, mixed precision, per-stain
preset statistics, architecture-specific crop sizes (ViT at 384).
"""

from __future__ import annotations

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

from lncr import __version__
from lncr.fileio import atomic_write_json, atomic_write_text, partial_path
from lncr.models.mil import build_mil
from lncr.study.config import TrainingSettings
from lncr.training.bags import BagDataset, SlideEntry
from lncr.training.metrics import accuracy, auc, youden_threshold

REFERENCE_TILE = 512  # crop_size and input_size are given for 512-px tiles and scale with them


@dataclass(frozen=True)
class RunSpec:
    stain: str
    magnification: str
    architecture: str
    bag_size: int
    seed: int

    def folder(self, runs_root: Path) -> Path:
        return (Path(runs_root) / self.stain / self.magnification
                / f"{self.architecture.replace(':', '-')}-b{self.bag_size}-s{self.seed}")


def channel_stats(entries: list[SlideEntry], tiles_per_slide: int = 16) -> tuple[list, list]:
    """Per-channel mean and s.d. (0–1 scale) of training tiles, spread over each slide."""
    ds = BagDataset(entries, bag_size=1, train=False, eval_tiles=tiles_per_slide)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    n = 0
    for i in range(len(ds)):
        x = ds[i][0].double() / 255.0
        total += x.sum(dim=(0, 2, 3)).numpy()
        total_sq += (x ** 2).sum(dim=(0, 2, 3)).numpy()
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 1e-8))
    return mean.round(6).tolist(), std.round(6).tolist()


class BagTransform:
    """uint8 bag → normalised float input: crop (random in training, centre otherwise), resize,
    flips and 90° rotations when augmenting. Sizes scale with the tile size."""

    def __init__(self, tile_size: int, settings: TrainingSettings, mean, std):
        scale = tile_size / REFERENCE_TILE
        self.crop = max(8, min(tile_size, round(settings.crop_size * scale)))
        self.size = max(8, round(settings.input_size * scale))
        self.augment = settings.augment
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, bag: torch.Tensor, train: bool, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        x = bag.float() / 255.0
        h, w = x.shape[-2:]
        if train:
            i = int(torch.randint(0, h - self.crop + 1, (1,), generator=generator))
            j = int(torch.randint(0, w - self.crop + 1, (1,), generator=generator))
        else:
            i, j = (h - self.crop) // 2, (w - self.crop) // 2
        x = x[..., i:i + self.crop, j:j + self.crop]
        if self.size != self.crop:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        if train and self.augment:
            k = int(torch.randint(0, 4, (1,), generator=generator))
            x = torch.rot90(x, k, dims=(-2, -1))
            if bool(torch.randint(0, 2, (1,), generator=generator)):
                x = x.flip(-1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


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


def _save(obj, path: Path) -> None:
    tmp = partial_path(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def predict_slides(model, entries: list[SlideEntry], transform: BagTransform, eval_tiles: int,
                   device: str) -> tuple[np.ndarray, np.ndarray]:
    """Probability and loss per slide, on up to ``eval_tiles`` tiles each (deterministic)."""
    model.eval()
    ds = BagDataset(entries, bag_size=1, train=False, eval_tiles=eval_tiles)
    probs, losses = [], []
    for i in range(len(ds)):
        bag, label, _ = ds[i]
        logit, _ = model(transform(bag.to(device), train=False).unsqueeze(0))
        probs.append(float(torch.sigmoid(logit)))
        losses.append(float(F.binary_cross_entropy_with_logits(logit, label.view(1).to(device))))
    return np.array(probs), np.array(losses)


def train_run(spec: RunSpec, entries: list[SlideEntry], settings: TrainingSettings,
              runs_root: Path, tile_size: int, weights=None, device: str = "cpu",
              force: bool = False, stop_after: Callable[[int], bool] | None = None) -> Path:
    """Train (or resume, or skip when finished) one run; returns its folder.

    ``entries`` are the stain × magnification's slides with their sides (``train``/``val``);
    external slides are ignored here. ``stop_after(epoch)`` returning True ends the call after
    that epoch's checkpoint (as an interruption would).
    """
    folder = spec.folder(runs_root)
    train = [e for e in entries if e.split == "train"]
    val = [e for e in entries if e.split == "val"]
    if not train:
        raise ValueError(f"no training slides for {spec.stain} {spec.magnification}")
    if (folder / "done.json").exists() and not force:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"bag_size": spec.bag_size, "seed": spec.seed,
                                           "architecture": spec.architecture})
    last = folder / "last.pt"
    if force:
        for name in ("last.pt", "best.pt", "done.json", "metrics.csv"):
            (folder / name).unlink(missing_ok=True)
    mean, std = channel_stats(train)
    config = {"spec": asdict(spec), "settings": settings.model_dump(mode="json"),
              "tile_size": tile_size, "channel_mean": mean, "channel_std": std,
              "versions": {"lncr": __version__, "torch": torch.__version__}}
    if last.exists():
        old = json.loads((folder / "config.json").read_text())
        if {k: old.get(k) for k in ("spec", "settings", "tile_size")} != \
                {k: config[k] for k in ("spec", "settings", "tile_size")}:
            raise ValueError(f"{folder} was started with other settings; use force to restart")
    atomic_write_json(folder / "config.json", config)
    atomic_write_text(folder / "split.csv", pd.DataFrame(
        [(e.patient_id, e.split, e.label, e.n_tiles, e.store) for e in train + val],
        columns=["patient_id", "split", "label", "tiles", "store"]).to_csv(index=False))

    torch.manual_seed(spec.seed)
    model = build_mil(spec.architecture, settings.embedding_dim, settings.transformer_layers,
                      settings.transformer_heads, weights).to(device)
    if spec.architecture.startswith("vit"):
        optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate,
                                     weight_decay=settings.weight_decay)
    else:
        optimiser = torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                                    momentum=settings.momentum, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_lambda(settings))
    transform = BagTransform(tile_size, settings, mean, std)
    rows: list[dict] = []
    start, best_key = 0, None
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["epoch"]) + 1
        best_key = tuple(state["best_key"]) if state["best_key"] is not None else None
        rows = pd.read_csv(folder / "metrics.csv").to_dict("records")[:start]
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tb"), purge_step=start)
    data = BagDataset(train, settings.bag_size, train=True, seed=spec.seed)
    labels_train = np.array([e.label for e in train])
    labels_val = np.array([e.label for e in val])
    try:
        for epoch in range(start, settings.epochs):
            torch.manual_seed(spec.seed * 100003 + epoch)
            generator = torch.Generator().manual_seed(spec.seed * 100003 + epoch)
            data.set_epoch(epoch)
            order = np.random.default_rng([spec.seed, epoch]).permutation(len(data))
            model.train()
            train_loss = 0.0
            for i in order:
                bag, label, _ = data[int(i)]
                x = transform(bag.to(device), train=True, generator=generator).unsqueeze(0)
                logit, _ = model(x)
                loss = F.binary_cross_entropy_with_logits(logit, label.view(1).to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                train_loss += loss.item() / len(order)
            scheduler.step()
            p_train, _ = predict_slides(model, train, transform, settings.eval_tiles, device)
            threshold = youden_threshold(labels_train, p_train)
            row = {"epoch": epoch, "lr": optimiser.param_groups[0]["lr"],
                   "train_loss": train_loss, "train_auc": auc(labels_train, p_train),
                   "threshold": threshold, "val_loss": float("nan"), "val_auc": float("nan"),
                   "val_accuracy": float("nan")}
            if val:
                p_val, l_val = predict_slides(model, val, transform, settings.eval_tiles, device)
                row.update(val_loss=float(l_val.mean()), val_auc=auc(labels_val, p_val),
                           val_accuracy=accuracy(labels_val, p_val, threshold))
            rows.append(row)
            for k, v in row.items():
                if k != "epoch":
                    writer.add_scalar(k.replace("_", "/", 1), v, epoch)
            atomic_write_text(folder / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))
            score = row["val_auc"] if not math.isnan(row["val_auc"]) else row["train_auc"]
            key = (score if not math.isnan(score) else -1.0,
                   -(row["val_loss"] if not math.isnan(row["val_loss"]) else row["train_loss"]))
            if best_key is None or key > best_key:
                best_key = key
                _save({"model": model.state_dict(), "epoch": epoch, "config": config}, folder / "best.pt")
            _save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                   "scheduler": scheduler.state_dict(), "epoch": epoch,
                   "best_key": list(best_key)}, last)
            if stop_after is not None and stop_after(epoch):
                return folder
        atomic_write_json(folder / "done.json", {"epochs": settings.epochs,
                                                 "best_val_auc": best_key[0] if best_key else None})
    finally:
        writer.close()
    return folder


def study_entries(study_yaml: str | Path, stain: str, magnification: str,
                  overrides: list[str] | None = None):
    """The study's config and the slides of one stain × magnification with their sides, from
    the recorded split (``lncr validate``) and the tile index (``lncr tile``)."""
    from lncr.study.validate import load_study
    from lncr.training.bags import slide_entries

    study = load_study(study_yaml, overrides, check_files=False)
    if not study.ok:
        raise ValueError("the study has errors; run `lncr validate` and fix them")
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
