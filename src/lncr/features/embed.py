"""Embed tiles once: every kept tile of a slide through a frozen backbone, into the slide's
features file (:mod:`lncr.features.store`).

Tiles are decoded, cropped and (for augmented views) rotated and flipped in DataLoader worker
processes, exactly as training's bags are (:func:`lncr.data.bags.view_tile`); scaling,
resizing, colour jitter and normalisation run on the device (:class:`DeviceInput`). View 0
is the centred crop evaluation uses, so features of view 0 give the predictions the
end-to-end model gives (tested to 1e-5). Augmented view ``v`` of tile ``k`` draws its crop,
rotation, flip and jitter from ``(seed, v, patient, k)``.

A slide whose file exists with the same fingerprint is skipped, so an interrupted embedding
resumes where it stopped, and a slide is written under a temporary name, so a file that exists
is whole. ``shard=(i, n)`` embeds every n-th slide from the i-th, for splitting a cohort over
machines (each writes its own files; no merge is needed).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lncr.data.bags import SlideEntry, view_tile
from lncr.data.inputs import DeviceInput, InputGeometry
from lncr.features.spec import FeatureSpec, store_identity
from lncr.features.store import FeatureWriter, fingerprint_of
from lncr.layout import Layout
from lncr.study.config import EmbeddingSettings
from lncr.tiling.store import TileStore


@dataclass(frozen=True)
class FeatureCache:
    """Where a study's features live (``layout.features_dir``) and how they are computed."""

    layout: Layout
    settings: EmbeddingSettings = EmbeddingSettings()

    def path(self, spec: FeatureSpec, entry: SlideEntry) -> Path:
        return self.layout.features_file(spec.feature_id(), entry.stain, entry.magnification,
                                         entry.patient_id)

    def fingerprint(self, spec: FeatureSpec, entry: SlideEntry) -> dict:
        return {"spec": spec.key(), "store": store_identity(entry.store),
                "tiles": int(entry.n_tiles)}

    def missing(self, spec: FeatureSpec, entries: list[SlideEntry]) -> list[SlideEntry]:
        """The slides whose features are absent, damaged or made from other inputs."""
        return [e for e in entries
                if fingerprint_of(self.path(spec, e)) != self.fingerprint(spec, e)]


class TileViews(Dataset):
    """Batches of tiles of several slides in one view each: keys
    ``(slide, start, stop, view)`` → (uint8 (B, 3, c, c), jitter factors (B, 3))."""

    def __init__(self, entries: list[SlideEntry], spec: FeatureSpec):
        self.entries, self.spec = entries, spec
        self.slide_keys = [zlib.crc32(e.patient_id.encode()) for e in entries]
        self._open: tuple[int, TileStore] | None = None  # one store open at a time

    def __len__(self) -> int:
        return len(self.entries)

    def store(self, slide: int) -> TileStore:
        if self._open is None or self._open[0] != slide:
            if self._open is not None:
                self._open[1].close()
            self._open = (slide, TileStore(self.entries[slide].store))
        return self._open[1]

    def __getitem__(self, key: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        slide, start, stop, view = key
        store, spec, out, factors = self.store(slide), self.spec, [], []
        for k in range(start, stop):
            tile = store[k]
            crop = min(spec.crop, *tile.shape[:2])
            rng = np.random.default_rng([spec.seed, view, self.slide_keys[slide], k])
            out.append(view_tile(tile, crop, rng, random_crop=view > 0,
                                 augment=view > 0 and spec.augment))
            jitter = spec.jitter if view > 0 else 0.0
            factors.append(1.0 + rng.uniform(-jitter, jitter, 3))
        bag = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
        return bag, torch.tensor(np.array(factors), dtype=torch.float32)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None}


def batches(entries: list[SlideEntry], views: int, size: int
            ) -> list[tuple[int, int, int, int]]:
    """The keys of :class:`TileViews` covering every tile of every slide in every view,
    slide by slide."""
    return [(i, s, min(e.n_tiles, s + size), v) for i, e in enumerate(entries)
            for v in range(views) for s in range(0, e.n_tiles, size)]


def build_encoder(spec: FeatureSpec, device: torch.device) -> torch.nn.Module:
    """The spec's backbone with its weights, in evaluation mode on ``device``."""
    from lncr.models.backbones import build_backbone

    encoder = build_backbone(spec.architecture, spec.embedding_dim, spec.weights)
    return encoder.eval().requires_grad_(False).to(device)


def embed_slides(cache: FeatureCache, spec: FeatureSpec, entries: list[SlideEntry], encoder,
                 device: torch.device, progress: Callable[[int], None] | None = None
                 ) -> list[Path]:
    """Compute and write the features files of ``entries`` (one loader for them all, so
    its worker processes start once); returns their paths."""
    from lncr.data.precision import autocast_dtype

    s = cache.settings
    inputs = DeviceInput(InputGeometry(spec.crop, spec.size), spec.mean, spec.std, device)
    amp = autocast_dtype(spec.precision, device)
    keys = batches(entries, spec.views, s.batch_size)
    data = DataLoader(TileViews(entries, spec), batch_size=None, sampler=keys,
                      num_workers=min(s.workers, len(keys)),
                      pin_memory=device.type == "cuda")
    writer, current, written = None, -1, []
    try:
        with torch.inference_mode():
            for (slide, start, _, view), (bag, factors) in zip(keys, data):
                x = inputs(bag[None], factors[None] if view > 0 and spec.jitter else None)[0]
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    values = encoder.features(x).float().cpu().numpy()
                if slide != current:
                    if writer is not None:
                        written.append(_finish(writer, entries[current]))
                    current, entry = slide, entries[slide]
                    writer = FeatureWriter(cache.path(spec, entry), spec.views, entry.n_tiles,
                                           values.shape[1], s.dtype,
                                           _attributes(cache, spec, entry))
                writer.write(view, start, values)
                if progress is not None:
                    progress(len(values))
        if writer is not None:
            written.append(_finish(writer, entries[current]))
        return written
    except BaseException:
        if writer is not None and writer.file:
            writer.discard()
        raise


def _finish(writer: FeatureWriter, entry: SlideEntry) -> Path:
    with TileStore(entry.store) as store:
        coords = store.coords
    return writer.finish(coords[["x", "y"]].to_numpy(), coords["index"].to_numpy())


def _attributes(cache: FeatureCache, spec: FeatureSpec, entry: SlideEntry) -> dict:
    from lncr.provenance import training_versions

    return {"fingerprint": cache.fingerprint(spec, entry), "feature_id": spec.feature_id(),
            "patient_id": entry.patient_id, "stain": entry.stain,
            "magnification": entry.magnification, "versions": training_versions()}


def embed_entries(cache: FeatureCache, spec: FeatureSpec, entries: list[SlideEntry],
                  device: torch.device | str = "cpu",
                  progress: Callable[[int], None] | None = None) -> list[SlideEntry]:
    """Embed the slides of ``entries`` whose features are missing or stale; the slides
    embedded now. The encoder is built only when there is work."""
    from filelock import FileLock

    from lncr.data.distributed import resolve_device

    todo = cache.missing(spec, entries)
    if not todo:
        return []
    lock = cache.path(spec, todo[0]).parent / ".embedding.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):  # sweep units sharing these features wait for one embedder
        todo = cache.missing(spec, entries)
        if not todo:
            return []
        device = device if isinstance(device, torch.device) else resolve_device(device)
        embed_slides(cache, spec, todo, build_encoder(spec, device), device, progress)
    return todo
