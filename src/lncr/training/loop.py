"""The parts of one training run — (stain, magnification, architecture, bag size, seed) → a
run folder — that :func:`lncr.training.trainer.train_run` puts together: the run's name and
folder, the model, optimiser, schedule, loaders and validation pass.

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
(:func:`lncr.data.bags.rank_share`) in DistributedDataParallel; uneven shares are handled
by DDP's join; outputs and validation predictions are gathered on every rank, and rank 0
writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lncr.data.bags import BagDataset, collate_bags
from lncr.data.distributed import Context
from lncr.data.inputs import DeviceInput
from lncr.errors import WorkFailed
from lncr.identifiers import file_name
from lncr.models.mil import AttentionMIL, build_mil
from lncr.study.config import TrainingSettings


@dataclass(frozen=True)
class RunSpec:
    stain: str
    magnification: str
    architecture: str
    bag_size: int
    seed: int
    split: str = ""  # "" = the study's recorded split; else a named re-drawn split (sweeps)

    def folder(self, runs_root: Path) -> Path:
        name = file_name(f"{self.architecture.replace(':', '-')}-b{self.bag_size}-s{self.seed}")
        return (Path(runs_root) / file_name(self.stain) / self.magnification
                / (f"{name}-{self.split}" if self.split else name))


def versions() -> dict[str, str]:
    """The package versions a training artifact records (:mod:`lncr.provenance`)."""
    from lncr.provenance import training_versions

    return training_versions()


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


def build_model(settings: TrainingSettings, weights=None, features: int | None = None
                ) -> AttentionMIL:
    """The run's bag model from its settings; with ``features`` (the width of cached
    features), the model without its backbone (:func:`lncr.models.mil.build_head_mil`)."""
    if features is not None:
        from lncr.models.mil import build_head_mil

        return build_head_mil(settings.architecture, features, settings.embedding_dim,
                              settings.transformer_layers, settings.transformer_heads,
                              settings.feedforward_dim, settings.dropout)
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


class TrainingDiverged(WorkFailed):
    """The training loss became NaN or infinite: the run stops unfinished (no ``done.json``)."""
