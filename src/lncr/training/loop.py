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

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lncr.errors import WorkFailed
from lncr.identifiers import file_name
from lncr.models.mil import AttentionMIL, build_mil
from lncr.study.config import TrainingSettings
from lncr.training.bags import BagDataset, SlideEntry, collate_bags, eval_indices
from lncr.training.distributed import Context
from lncr.training.inputs import DeviceInput, tile_channel_stats


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


def channel_stats(entries: list[SlideEntry], tiles_per_slide: int = 16) -> tuple[list, list]:
    """Per-channel mean and s.d. (0–1 scale) of training tiles, spread over each slide."""
    ds = BagDataset(entries, bag_size=1, train=False)
    return tile_channel_stats([t for i, e in enumerate(entries)
                               for t in ds.tiles(i, eval_indices(e.n_tiles, tiles_per_slide))])


def run_stats(settings: TrainingSettings, stain: str, train: list[SlideEntry]
              ) -> tuple[list, list]:
    """A run's channel statistics: the encoder's own when it requires them (foundation
    models), else ``training.channel_stats``'s preset, else computed from the training
    slides."""
    from lncr.models.backbones import backbone_spec
    from lncr.training.inputs import preset_stats

    required = backbone_spec(settings.architecture).stats
    if required is not None:
        return list(required[0]), list(required[1])
    return preset_stats(settings.channel_stats, stain) or channel_stats(train)


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


def train_run(spec: RunSpec, entries: list[SlideEntry], settings: TrainingSettings,
              runs_root: Path, tile_size: int, weights=None, device: str | Context = "cpu",
              force: bool = False, stop_after: Callable[[int, int | None], bool] | None = None,
              source: dict | None = None, excluded: list[dict] | None = None,
              features=None, on_epoch: Callable[[dict], None] | None = None,
              on_step: Callable[[int, int, int], None] | None = None) -> Path:
    """Train (or resume, or skip when finished) one run; returns its folder.

    ``entries`` are the stain × magnification's slides with their sides (``train``/``val``);
    external slides are ignored. ``device`` is a device name or a :class:`Context` from
    :func:`lncr.training.distributed.setup`. ``stop_after(epoch, step)`` is asked after every
    checkpoint (``step`` is None at the end of an epoch); True ends the call there, as an
    interruption would. ``source`` (the study file and overrides) is recorded for
    ``lncr predict``; ``excluded`` (the patients without tiles here,
    :func:`lncr.training.entries.unusable_patients`) is recorded, and named when the training
    or validation slides lose a label. ``features`` (a
    :class:`lncr.features.embed.FeatureCache`) trains a frozen pretrained backbone from cached
    features, embedding the slides first when needed. ``on_epoch`` gets each epoch's metrics
    row (with ``epochs`` and ``seconds``) on the main process, ``on_step(epoch, step, steps)``
    each optimiser step there. The work is
    :class:`lncr.training.trainer.Trainer`'s.
    """
    from lncr.training.trainer import Trainer

    trainer = Trainer(spec, entries, settings, runs_root, tile_size, weights, device, force,
                      source, excluded, features)
    trainer.on_epoch, trainer.on_step = on_epoch, on_step
    return trainer.run(stop_after)
