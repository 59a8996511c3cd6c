"""Bags of tiles for attention-MIL training and evaluation, read from the tile stores.

One item per slide. In training mode, each epoch draws a bag of ``bag_size`` tiles at random
from the slide — without replacement when it has enough tiles; otherwise, as the authors'
sampler (``ModelTrain.py``, ``DistSlideSampler.get_slide``), every tile ⌊bag/n⌋ times and the
remaining bag − n⌊bag/n⌋ tiles drawn without replacement, so every tile is in every bag at
least ⌊bag/n⌋ and at most ⌈bag/n⌉ times. Draws depend only on
``(seed, epoch, slide)``, so a resumed run draws exactly the bags an uninterrupted run would.
In evaluation mode, up to ``eval_tiles`` tiles are chosen deterministically: all of them, or
evenly spaced over the store (which is in grid order, so they spread over the slide).

Tiles are decoded, cropped, flipped and rotated in DataLoader workers and returned as uint8
(N, 3, crop, crop) tensors; scaling, resizing, colour jitter and normalisation happen on the
device (:mod:`lncr.data.inputs`), which keeps workers cheap and transfers small.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from lncr.layout import Layout
from lncr.study.tables import OUTSIDE_SPLIT
from lncr.tiling.store import TileStore


@dataclass(frozen=True)
class SlideEntry:
    patient_id: str
    stain: str
    magnification: str
    store: str
    label: int | None  # None: a prospective patient (no outcome yet)
    split: str  # train | val | external | prospective
    n_tiles: int


def label_tensor(entry: SlideEntry) -> torch.Tensor:
    """The slide's label as a float tensor (NaN for a prospective patient: no loss)."""
    return torch.tensor(float("nan") if entry.label is None else float(entry.label))


def slide_entries(layout: Layout, patients: pd.DataFrame, split: pd.DataFrame | None,
                  stain: str, magnification: str) -> list[SlideEntry]:
    """Slides of one stain × magnification with tiles, labelled, with their split.

    ``patients`` has ``patient_id, cohort, label``; ``split`` (``patient_id, split``) covers the
    development patients. External patients get split ``external``.
    """
    index = layout.read_tiles_index()
    rows = index[(index.status == "ok") & (index.stain == stain)
                 & (index.magnification == magnification) & (index.kept > 0)]
    info = patients.set_index("patient_id")
    sides = dict(zip(split.patient_id, split.split)) if split is not None else {}
    entries = []
    for r in rows.sort_values("patient_id").itertuples():
        if r.patient_id not in info.index:
            continue
        p = info.loc[r.patient_id]
        side = p.cohort if p.cohort in OUTSIDE_SPLIT else sides.get(r.patient_id)
        if side is None:
            raise ValueError(f"development patient {r.patient_id} is not in the split; run "
                             "`lncr validate` to record it")
        label = None if pd.isna(p.label) else int(p.label)
        entries.append(SlideEntry(r.patient_id, stain, magnification, r.store, label, side,
                                  int(r.kept)))
    return entries


def train_indices(n_tiles: int, bag_size: int, seed: int, epoch: int, slide: int) -> np.ndarray:
    """The tiles of one training bag (deterministic in seed, epoch and slide): ``bag_size``
    without replacement, or — a slide with fewer tiles — each tile ⌊bag/n⌋ times plus the
    remainder without replacement (the authors' distribution), in a random order.

    >>> np.bincount(train_indices(3, 8, 0, 0, 0), minlength=3).tolist() in (
    ...     [3, 3, 2], [3, 2, 3], [2, 3, 3])
    True
    """
    rng = np.random.default_rng([seed, epoch, slide])
    if n_tiles >= bag_size:
        return np.sort(rng.choice(n_tiles, size=bag_size, replace=False))
    whole = np.tile(np.arange(n_tiles), bag_size // n_tiles)
    rest = rng.choice(n_tiles, size=bag_size % n_tiles, replace=False)
    return rng.permutation(np.concatenate([whole, rest]))


def eval_indices(n_tiles: int, limit: int) -> np.ndarray:
    """Up to ``limit`` tiles spread evenly over the store (all when there are fewer)."""
    if n_tiles <= limit:
        return np.arange(n_tiles)
    return np.unique(np.linspace(0, n_tiles - 1, limit).round().astype(int))


def chunk_count(n_tiles: int, chunk_size: int) -> int:
    """How many chunks (bags) of at most ``chunk_size`` tiles a slide of ``n_tiles`` needs."""
    return -(-n_tiles // chunk_size)


def chunk_members(n_tiles: int, chunks: int, chunk: int) -> np.ndarray:
    """The tiles of chunk ``chunk`` of ``chunks``: interleaved, ``chunk, chunk + chunks, …``,
    so every chunk spans the whole slide. Prediction (``--tiles all``), tile scores and
    Grad-CAM all deal tiles with this rule, so an explanation sees the bags the prediction
    saw.

    >>> chunk_members(7, 3, 1).tolist()
    [1, 4]
    """
    return np.arange(n_tiles)[chunk::chunks]


def view_tile(tile: np.ndarray, crop: int, rng: np.random.Generator, random_crop: bool,
              augment: bool) -> np.ndarray:
    """A ``crop``-px view of one tile (H, W, 3): centred, or at a random position, then (with
    ``augment``) a random 90° rotation and horizontal flip, drawn from ``rng`` in that
    order. Training bags and the feature cache's augmented views both use it."""
    h, w = tile.shape[:2]
    if random_crop:
        i, j = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    else:
        i, j = (h - crop) // 2, (w - crop) // 2
    t = tile[i:i + crop, j:j + crop]
    if augment:
        t = np.rot90(t, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            t = t[:, ::-1]
    return t


class BagDataset(Dataset):
    """Bags per slide, cropped (and augmented in training) as uint8.

    Keys are ``(epoch, slide)`` pairs (from :class:`EpochSampler`), slide numbers, or
    ``(slide, chunk, chunks)`` for one interleaved chunk (:func:`chunk_members`) of every tile:
    the dataset holds no epoch state, so persistent DataLoader workers see every epoch
    right.
    ``dataset[key]`` → (tiles uint8 (N, 3, crop, crop), jitter factors (N, 3) float32,
    label float, slide). Crops, flips, 90° rotations and jitter factors are drawn from
    ``(seed, epoch, slide)``: the same bag whatever the number of workers or a resume.
    """

    def __init__(self, entries: list[SlideEntry], bag_size: int, train: bool, seed: int = 0,
                 eval_tiles: int = 128, crop: int | None = None, augment: bool = False,
                 jitter: float = 0.0):
        if bag_size < 1 or eval_tiles < 1:
            raise ValueError("bag_size and eval_tiles must be positive")
        self.entries, self.bag_size, self.train = entries, bag_size, train
        self.seed, self.eval_tiles = seed, eval_tiles
        self.crop, self.augment, self.jitter = crop, augment and train, jitter if train else 0.0
        self._stores: dict[int, TileStore] = {}  # opened lazily, per worker process

    def __len__(self) -> int:
        return len(self.entries)

    def indices(self, slide: int, epoch: int = 0) -> np.ndarray:
        n = self.entries[slide].n_tiles
        if self.train:
            return train_indices(n, self.bag_size, self.seed, epoch, slide)
        return eval_indices(n, self.eval_tiles)

    def tiles(self, slide: int, indices: np.ndarray) -> np.ndarray:
        """uint8 tiles (N, H, W, 3) of one slide."""
        store = self._stores.get(slide)
        if store is None:
            store = self._stores[slide] = TileStore(self.entries[slide].store)
        return np.stack([store[int(k)] for k in indices])

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        if isinstance(key, tuple) and len(key) == 3:  # (slide, chunk, chunks): prediction
            slide, chunk, chunks = key
            return self.bag(slide, chunk_members(self.entries[slide].n_tiles, chunks, chunk), 0)
        epoch, slide = key if isinstance(key, tuple) else (0, int(key))
        return self.bag(slide, self.indices(slide, epoch), epoch)

    def bag(self, slide: int, indices: np.ndarray, epoch: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The given tiles of one slide, cropped (and augmented in training)."""
        tiles = self.tiles(slide, indices)
        rng = np.random.default_rng([self.seed, epoch, slide, 1])
        n, h, w = tiles.shape[:3]
        c = min(self.crop or min(h, w), h, w)
        out = np.empty((n, c, c, 3), dtype=np.uint8)
        for k in range(n):
            out[k] = view_tile(tiles[k], c, rng, self.train, self.augment)
        factors = (1.0 + rng.uniform(-self.jitter, self.jitter, (n, 3))).astype(np.float32)
        bag = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return bag, torch.from_numpy(factors), label_tensor(self.entries[slide]), slide

    def __getstate__(self) -> dict:  # open stores do not cross process boundaries
        state = self.__dict__.copy()
        state["_stores"] = {}
        return state


def rank_share(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The slides one rank trains on: every ``world``-th of the epoch's order, from ``rank``.
    The shares of all ranks are disjoint and together cover every slide once."""
    return order[rank::world]


class EpochSampler(Sampler):
    """Keys ``(epoch, slide)`` in a seeded per-epoch order, for one rank's share, from a given
    position (a resumed run continues mid-epoch)."""

    def __init__(self, n_slides: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n_slides, seed, rank, world
        self.epoch, self.start = 0, 0

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def share(self, epoch: int, rank: int | None = None) -> np.ndarray:
        return rank_share(self.order(epoch), self.rank if rank is None else rank, self.world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from its ``start``-th item of this rank's share."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for slide in self.share(self.epoch)[self.start:]:
            yield self.epoch, int(slide)

    def __len__(self) -> int:
        return max(0, len(self.share(self.epoch)) - self.start)


def collate_bags(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack bags of equal size: (B, N, 3, c, c), (B, N, 3), (B,), (B,)."""
    bags, factors, labels, slides = zip(*items)
    return (torch.stack(bags), torch.stack(factors), torch.stack(labels),
            torch.tensor(slides, dtype=torch.long))
