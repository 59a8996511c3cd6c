"""Bags of tiles for attention-MIL training and evaluation, read from the tile stores.

One item per slide. In training mode, each epoch draws a bag of ``bag_size`` tiles at random
from the slide — without replacement when it has enough tiles, otherwise every tile is used
and tiles are repeated (in a random order) to fill the bag. Draws depend only on
``(seed, epoch, slide)``, so a resumed run draws exactly the bags an uninterrupted run would.
In evaluation mode, up to ``eval_tiles`` tiles are chosen deterministically: all of them, or
evenly spaced over the store (which is in grid order, so they spread over the slide).

Tiles are returned as uint8 (N, 3, H, W) tensors; scaling and normalisation happen on the
device, which keeps DataLoader workers cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lncr.tiling.store import TileStore


@dataclass(frozen=True)
class SlideEntry:
    patient_id: str
    stain: str
    magnification: str
    store: str
    label: int
    split: str  # train | val | external
    n_tiles: int


def slide_entries(tiles_folder: str | Path, patients: pd.DataFrame, split: pd.DataFrame | None,
                  stain: str, magnification: str) -> list[SlideEntry]:
    """Slides of one stain × magnification with tiles, labelled, with their split.

    ``patients`` has ``patient_id, cohort, label``; ``split`` (``patient_id, split``) covers the
    development patients. External patients get split ``external``.
    """
    index = pd.read_csv(Path(tiles_folder) / "index.csv", dtype={"patient_id": str})
    rows = index[(index.status == "ok") & (index.stain == stain)
                 & (index.magnification == magnification) & (index.kept > 0)]
    info = patients.set_index("patient_id")
    sides = dict(zip(split.patient_id, split.split)) if split is not None else {}
    entries = []
    for r in rows.sort_values("patient_id").itertuples():
        if r.patient_id not in info.index:
            continue
        p = info.loc[r.patient_id]
        side = "external" if p.cohort == "external" else sides.get(r.patient_id)
        if side is None:
            raise ValueError(f"development patient {r.patient_id} is not in the split; run "
                             "`lncr validate` to record it")
        entries.append(SlideEntry(r.patient_id, stain, magnification, r.store, int(p.label),
                                  side, int(r.kept)))
    return entries


def train_indices(n_tiles: int, bag_size: int, seed: int, epoch: int, slide: int) -> np.ndarray:
    """The tiles of one training bag (deterministic in seed, epoch and slide)."""
    rng = np.random.default_rng([seed, epoch, slide])
    if n_tiles >= bag_size:
        return np.sort(rng.choice(n_tiles, size=bag_size, replace=False))
    reps = -(-bag_size // n_tiles)
    return rng.permutation(np.tile(np.arange(n_tiles), reps))[:bag_size]


def eval_indices(n_tiles: int, limit: int) -> np.ndarray:
    """Up to ``limit`` tiles spread evenly over the store (all when there are fewer)."""
    if n_tiles <= limit:
        return np.arange(n_tiles)
    return np.unique(np.linspace(0, n_tiles - 1, limit).round().astype(int))


class BagDataset(Dataset):
    """Bags per slide. ``dataset[i]`` → (tiles uint8 (N, 3, H, W), label float, i)."""

    def __init__(self, entries: list[SlideEntry], bag_size: int, train: bool, seed: int = 0,
                 eval_tiles: int = 128):
        if bag_size < 1 or eval_tiles < 1:
            raise ValueError("bag_size and eval_tiles must be positive")
        self.entries, self.bag_size, self.train = entries, bag_size, train
        self.seed, self.eval_tiles, self.epoch = seed, eval_tiles, 0
        self._stores: dict[int, TileStore] = {}  # opened lazily, per worker process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def indices(self, i: int) -> np.ndarray:
        n = self.entries[i].n_tiles
        if self.train:
            return train_indices(n, self.bag_size, self.seed, self.epoch, i)
        return eval_indices(n, self.eval_tiles)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        store = self._stores.get(i)
        if store is None:
            store = self._stores[i] = TileStore(self.entries[i].store)
        tiles = np.stack([store[k] for k in self.indices(i)])
        bag = torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()
        return bag, torch.tensor(float(self.entries[i].label)), i

    def __getstate__(self) -> dict:  # open stores do not cross process boundaries
        state = self.__dict__.copy()
        state["_stores"] = {}
        return state
