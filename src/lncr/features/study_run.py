"""``lncr embed``: a study's tiles through its frozen encoders, once, before training.

For every encoder × stain × magnification the features are exactly those the study's runs
ask for (:func:`lncr.features.spec.run_features`): the training settings with that
architecture, the input geometry for the study's tiles, the channel statistics (a preset, or
computed from the training slides of the recorded split as a run computes them) and the
embedding settings. Runs then find their features ready; slides of every cohort are embedded
(embedding uses no label). ``features/<id>/encoder.json`` records each encoder's spec.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from lncr.data.bags import SlideEntry
from lncr.errors import BadInput
from lncr.features.embed import FeatureCache, build_encoder, embed_slides
from lncr.features.spec import FeatureSpec, run_features
from lncr.fileio import atomic_write_json
from lncr.layout import Layout
from lncr.locks import locks_output
from lncr.study.validate import Study


@dataclass(frozen=True)
class EmbeddingJob:
    """One encoder on one stain × magnification: its spec and the slides still to embed."""

    spec: FeatureSpec
    stain: str
    magnification: str
    entries: list[SlideEntry]
    todo: list[SlideEntry]

    @property
    def tiles(self) -> int:
        return sum(e.n_tiles for e in self.todo) * self.spec.views


def default_encoders(study: Study) -> list[str]:
    """The encoders a study's sweep freezes: its architectures with pretrained weights, under
    ``sweep.backbone: frozen`` or ``training.backbone_lr_factor: 0`` (a randomly initialised
    backbone is never frozen, so it needs no features)."""
    cfg = study.config
    if cfg.sweep.backbone == "frozen" or cfg.training.backbone_lr_factor == 0:
        frozen = [a for a in cfg.sweep.architectures if cfg.backbone_weights(a) is not None]
        if frozen:
            return frozen
    raise BadInput("nothing to embed: no pretrained backbone of this study is frozen. Name "
                   "one with --encoder, or set sweep.backbone=frozen or "
                   "training.backbone_lr_factor=0 (with pretrained weights)")


def job_spec(study: Study, architecture: str, stain: str, entries: list[SlideEntry],
             device: torch.device) -> FeatureSpec:
    """The features a run of ``architecture`` on these slides will ask for."""
    from lncr.data.inputs import input_geometry, run_stats
    from lncr.data.precision import autocast_dtype, precision_name

    cfg = study.config
    weights = cfg.backbone_weights(architecture)
    if weights is None:
        raise BadInput(f"{architecture} has no pretrained weights to embed with: give a file "
                       "in sweep.weights or set training.pretrained=true")
    settings = cfg.training.model_copy(update={"architecture": architecture})
    geometry = input_geometry(settings, cfg.tiling.tile_size)
    stats = run_stats(settings, stain, [e for e in entries if e.split == "train"])
    precision = precision_name(autocast_dtype(settings.precision, device))
    return run_features(settings, cfg.embedding, weights, geometry, stats, precision)


def plan(study: Study, encoders: list[str], cache: FeatureCache, device: torch.device,
         shard: tuple[int, int] = (0, 1)) -> list[EmbeddingJob]:
    """Every encoder × stain × magnification with its slides (this shard's share of those
    still to embed): the sweep's magnifications, and every magnification when the final
    models freeze their backbone too."""
    from lncr.data.entries import study_entries
    from lncr.study.config import sweep_magnifications, sweep_stains

    index, count = shard
    cfg, jobs = study.config, []
    mags = list(sweep_magnifications(cfg))
    if cfg.training.backbone_lr_factor == 0:  # the final models train on features too
        mags += [m for m in cfg.magnification_labels() if m not in mags]
    for architecture in encoders:
        for stain in sweep_stains(cfg):
            for mag in mags:
                entries = study_entries(study, stain, mag)
                if not entries:
                    continue
                spec = job_spec(study, architecture, stain, entries, device)
                todo = cache.missing(spec, entries)[index::count]
                jobs.append(EmbeddingJob(spec, stain, mag, entries, todo))
    return jobs


@locks_output
def embed_study(study: Study, encoders: list[str] | None = None, device: str = "auto",
                shard: tuple[int, int] = (0, 1),
                progress: Callable[[str, int, int], None] | None = None,
                executor: str = "local", workers: int = 0, address: str | None = None
                ) -> pd.DataFrame:
    """Embed every slide the study's frozen encoders need; one row per encoder × stain ×
    magnification (slides, embedded now, tiles, seconds). ``progress(what, tiles, total)`` is
    called after every batch with the tiles done so far and the total to do.

    ``executor="ray"`` splits the slides still to embed into ``workers`` shards, one Ray task
    each (:mod:`lncr.features.ray_shards`), on the cluster at ``address`` or a local one."""
    encoders = encoders or default_encoders(study)
    if executor == "ray":
        from lncr.features.ray_shards import embed_on_ray

        return embed_on_ray(study, encoders, embed_shard, workers, address, progress)
    if executor != "local":
        raise BadInput(f"--executor {executor!r}: use local or ray")
    return embed_shard(study, encoders, device, shard, progress)


def embed_shard(study: Study, encoders: list[str], device: str = "auto",
                shard: tuple[int, int] = (0, 1),
                progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """:func:`embed_study`'s work on one shard, without the output folder's lock (a Ray task
    runs it while the command that started it holds the lock)."""
    from lncr.data.distributed import resolve_device

    dev = resolve_device(device)
    cache = FeatureCache(Layout(study.config.output_dir), study.config.embedding)
    jobs = plan(study, encoders, cache, dev, shard)
    total, done, rows = sum(j.tiles for j in jobs), 0, []
    encoders_built: dict[str, torch.nn.Module] = {}
    for job in jobs:
        t0 = time.perf_counter()
        if shard[0] == 0:  # one writer of the records
            write_record(cache, job.spec, study)
        key = job.spec.feature_id()
        if job.todo and key not in encoders_built:
            encoders_built.clear()  # one encoder in memory at a time
            encoders_built[key] = build_encoder(job.spec, dev)

        def advance(n: int, what=f"{job.spec.architecture} {job.stain} {job.magnification}"):
            nonlocal done
            done += n
            if progress is not None:
                progress(what, done, total)

        if job.todo:
            embed_slides(cache, job.spec, job.todo, encoders_built[key], dev, advance)
        rows.append({"encoder": job.spec.architecture, "stain": job.stain,
                     "magnification": job.magnification, "feature_id": job.spec.feature_id(),
                     "slides": len(job.entries), "embedded": len(job.todo),
                     "tiles": job.tiles, "seconds": round(time.perf_counter() - t0, 3)})
    return pd.DataFrame(rows)


def write_record(cache: FeatureCache, spec: FeatureSpec, study: Study) -> None:
    """``features/<id>/encoder.json``: the spec, the weights and the versions."""
    from lncr.provenance import training_versions

    path = cache.layout.features_dir / spec.feature_id() / "encoder.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"spec": spec.key(), "weights": spec.weights,
                                 **study.source, "versions": training_versions()})
