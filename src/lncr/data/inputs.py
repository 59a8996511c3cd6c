"""What the network sees: crop and resize geometry, per-stain channel statistics, and the
device-side half of the input pipeline.

The published pipeline crops 384 px from each 512-px tile (random in training, centred in
evaluation) and resizes the crop to 299 px; a Vision Transformer takes the 384-px crop as is.
Sizes are given for 512-px tiles and scale with the tile size, so small test tiles get
proportionally small inputs.

Work is split in two: DataLoader workers decode, crop, flip and rotate tiles as uint8
(:mod:`lncr.data.bags`), and :class:`DeviceInput` converts to float, resizes, applies the
colour jitter factors drawn in the worker, and normalises with the channel statistics on the
device. Channel statistics come from the training tiles (``computed``, stored with the run),
from the constants of the authors' training script (``published``, per stain), or ImageNet's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lncr.data.bags import BagDataset, SlideEntry, eval_indices
from lncr.models.backbones import backbone_spec
from lncr.study.config import TrainingSettings

REFERENCE_TILE = 512  # crop_size and input_size are given for 512-px tiles

#: Per-stain channel mean and s.d. (0–1 scale) hard-coded in the authors' public training
#: script (neolibin/LNCR-DL-model, ModelTrain.py), measured on their normalised tiles.
PUBLISHED_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "HE": ((0.7441, 0.5278, 0.7350), (0.1951, 0.2996, 0.2122)),
    "PAS": ((0.8474, 0.7170, 0.8241), (0.1404, 0.2086, 0.1580)),
    "PASM": ((0.4559, 0.3877, 0.4707), (0.3390, 0.3588, 0.3665)),
    "MASSON": ((0.6599, 0.5043, 0.6319), (0.2691, 0.3343, 0.2675)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class InputGeometry:
    """Crop taken from a tile and the size the network receives."""

    crop: int
    size: int

    @property
    def resize(self) -> bool:
        return self.size != self.crop


def input_geometry(settings: TrainingSettings, tile_size: int) -> InputGeometry:
    """Crop and input sizes for ``tile_size`` tiles; fixed-input backbones (ViT) take the crop
    without resizing, and it must then equal their native size."""
    scale = tile_size / REFERENCE_TILE
    crop = max(8, min(tile_size, round(settings.crop_size * scale)))
    spec = backbone_spec(settings.architecture)
    if spec.resize_to_native:  # foundation models: their authors' input size
        return InputGeometry(crop, spec.input_size)
    if spec.fixed_input:
        if crop != spec.input_size:
            raise ValueError(
                f"{settings.architecture} only accepts {spec.input_size}-px inputs, but tiles of "
                f"{tile_size} px with training.crop_size={settings.crop_size} give {crop}-px "
                f"crops: tile at 512 px with crop_size {spec.input_size} (as published), or set "
                "crop_size so the crop is the model's size")
        return InputGeometry(crop, crop)
    return InputGeometry(crop, max(8, round(settings.input_size * scale)))


def preset_stats(preset: str, stain: str) -> tuple[list[float], list[float]] | None:
    """Channel statistics of a named preset, or None for ``computed``."""
    if preset == "computed":
        return None
    if preset == "imagenet":
        return list(IMAGENET_STATS[0]), list(IMAGENET_STATS[1])
    if stain not in PUBLISHED_STATS:
        raise ValueError(f"no published channel statistics for stain {stain!r} (only "
                         f"{', '.join(PUBLISHED_STATS)}); use training.channel_stats=computed")
    mean, std = PUBLISHED_STATS[stain]
    return list(mean), list(std)


def tile_channel_stats(tiles: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and s.d. (0–1 scale) of uint8 RGB tiles (H, W, 3)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    n = 0
    for t in tiles:
        x = t.reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x ** 2).sum(0)
        n += x.shape[0]
    if n == 0:
        raise ValueError("no tiles to compute channel statistics from")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 1e-8))
    return mean.round(6).tolist(), std.round(6).tolist()


class DeviceInput:
    """uint8 bags (B, N, 3, c, c) + jitter factors (B, N, 3) → normalised float inputs."""

    def __init__(self, geometry: InputGeometry, mean, std, device: torch.device | str):
        self.geometry = geometry
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.device = device

    def __call__(self, bags: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        b, n = bags.shape[:2]
        x = bags.to(self.device, non_blocking=True).flatten(0, 1).float().div_(255.0)
        if self.geometry.resize:
            x = F.interpolate(x, size=(self.geometry.size, self.geometry.size), mode="bilinear",
                              antialias=True, align_corners=False)
        if jitter is not None:
            x = colour_jitter(x, jitter.to(self.device).flatten(0, 1))
        x = (x - self.mean) / self.std
        return x.view(b, n, *x.shape[1:])


def colour_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation per image (factors (M, 3) around 1), on 0–1 RGB."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    x = x * factors[:, 0].view(-1, 1, 1, 1)
    grey_mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (x - grey_mean) * factors[:, 1].view(-1, 1, 1, 1) + grey_mean
    grey = (x * weights).sum(1, keepdim=True)
    x = (x - grey) * factors[:, 2].view(-1, 1, 1, 1) + grey
    return x.clamp_(0.0, 1.0)


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
    required = backbone_spec(settings.architecture).stats
    if required is not None:
        return list(required[0]), list(required[1])
    return preset_stats(settings.channel_stats, stain) or channel_stats(train)
