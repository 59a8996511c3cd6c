"""Bags of cached features: what :class:`lncr.data.bags.BagDataset` gives, with the
backbone already applied.

The keys, the tiles of each bag (training draws, evaluation's spread, prediction's chunks) and
the labels are the pixel dataset's — only :meth:`FeatureBagDataset.bag` differs: it reads the
tiles' features instead of decoding them. In training with augmented views, each tile of a
bag takes one of views 1… drawn from ``(seed, epoch, slide)``; evaluation and prediction use
view 0, the centred crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lncr.data.bags import BagDataset, SlideEntry, label_tensor
from lncr.features.store import FeatureFile


class LoadedFeatures:
    """Features files held in memory for every dataset of this process, each file once, up
    to ``budget`` bytes in all: the runs of a group (:mod:`lncr.training.group`) read the same
    slides' features, and each keeping its own copy would multiply the memory by the group's
    size. A file is known by its path, size and modification time, so a file written again is
    read again. Arrays are read-only."""

    def __init__(self, budget: int = 2 << 30):
        self.budget, self.used = budget, 0
        self._arrays: dict[tuple, np.ndarray] = {}

    @staticmethod
    def key(path: Path) -> tuple:
        stat = path.stat()
        return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    def get(self, path: Path) -> np.ndarray | None:
        """The file's features, loading them if they fit; None when they do not."""
        key = self.key(path)
        array = self._arrays.get(key)
        if array is None:
            with FeatureFile(path) as file:
                if self.used + file.nbytes > self.budget:
                    return None
                array = file.load()
            array.flags.writeable = False
            self._arrays[key] = array
            self.used += array.nbytes
        return array


#: The features this process holds in memory (every dataset shares them).
LOADED = LoadedFeatures()


class FeatureBagDataset(BagDataset):
    """``dataset[key]`` → (features (N, F) float32, ones (N, 3), label, slide).

    A slide's features are read into memory the first time it is used while they fit in the
    process's budget (:data:`LOADED`, 2 GiB: all datasets of the process together, each file
    once), so that every later bag is an array lookup; beyond that, bags are read from the
    file."""

    def __init__(self, entries: list[SlideEntry], paths: list[Path], bag_size: int,
                 train: bool, seed: int = 0, eval_tiles: int = 128, views: int = 1):
        super().__init__(entries, bag_size, train, seed, eval_tiles)
        if len(paths) != len(entries):
            raise ValueError("one features file per slide is needed")
        self.paths, self.views = [Path(p) for p in paths], views
        self._files: dict[int, FeatureFile] = {}
        self._arrays: dict[int, np.ndarray] = {}

    def read(self, slide: int, indices: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        array = self._arrays.get(slide)
        if array is None and slide not in self._files:
            array = LOADED.get(self.paths[slide])
            if array is not None:
                self._arrays[slide] = array
        if array is not None:
            return array[0 if views is None else views, indices]
        file = self._files.get(slide)
        if file is None:
            file = self._files[slide] = FeatureFile(self.paths[slide])
        return file.read(indices, views)

    def bag(self, slide: int, indices: np.ndarray, epoch: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        views = None
        if self.train and self.views > 1:
            rng = np.random.default_rng([self.seed, epoch, slide, 3])
            views = rng.integers(1, self.views, len(indices))
        features = torch.from_numpy(np.ascontiguousarray(self.read(slide, indices, views)))
        return (features, torch.ones(len(indices), 3),
                label_tensor(self.entries[slide]), slide)

    def __getstate__(self) -> dict:  # open files do not cross process boundaries
        return {**super().__getstate__(), "_files": {}, "_arrays": {}}


class FeatureInput:
    """The device half of the input pipeline for features: only the move to the device (the
    pixel pipeline's :class:`lncr.data.inputs.DeviceInput` counterpart)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def __call__(self, bags: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        return bags.to(self.device, non_blocking=True).float()
