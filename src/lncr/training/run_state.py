"""What a training run keeps between calls: the key a resume must match, which epoch is best,
the RNG state of a mid-epoch checkpoint, the epoch seeds, and the study path it records."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

#: Settings that do not change what a run computes (a resume may change them).
NEUTRAL_SETTINGS = ("loader_workers", "checkpoint_every")


def resume_key(config: dict) -> dict:
    """What must match for a run to resume: the spec, the settings that change results and
    the tile size."""
    s = {k: v for k, v in config["settings"].items() if k not in NEUTRAL_SETTINGS}
    features = (config.get("features") or {}).get("id")
    return {"spec": config["spec"], "settings": s, "tile_size": config["tile_size"],
            "features": features}


def best_key(row: dict) -> tuple[float, float]:
    """Which epoch is best: validation AUC (training AUC without validation slides), ties to
    the lower loss."""
    score = row["val_auc"] if not math.isnan(row["val_auc"]) else row["train_auc"]
    return (score if not math.isnan(score) else -1.0,
            -(row["val_loss"] if not math.isnan(row["val_loss"]) else row["train_loss"]))


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def epoch_seed(seed: int, epoch: int, rank: int, step: int = 0) -> int:
    return int(np.random.default_rng([seed, epoch, rank, step]).integers(2 ** 62))


def portable_source(source: dict | None, folder: Path) -> dict | None:
    """The run's study file relative to the run folder when the run lies inside the study's
    folder, so a copied study's runs point at the copy (see lncr.paths)."""
    if not source or not source.get("study"):
        return source
    study = Path(os.path.abspath(source["study"]))
    run = Path(os.path.abspath(folder))
    if study.parent in run.parents:
        return {**source, "study": Path(os.path.relpath(study, run)).as_posix()}
    return source
