"""Successive halving for the sweep (``sweep.early_stopping: halving``): the rungs, a run's
score at a rung, and which configurations go on."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from lncr.sweep.grid import Unit


def halving_rungs(epochs: int, min_epochs: int, rate: int) -> list[int]:
    """Successive-halving checkpoints: ``min_epochs × rate^k`` below ``epochs``, then
    ``epochs`` (e.g. 100 epochs, 10, rate 3 → [10, 30, 90, 100])."""
    rungs, r = [], min_epochs
    while r < epochs:
        rungs.append(r)
        r *= rate
    return rungs + [epochs]


def score_at(folder: str | Path, epoch: int) -> tuple[float, float]:
    """(validation AUC, validation loss) of a run at ``epoch`` (0-based), NaN if absent."""
    path = Path(folder) / "metrics.csv"
    if not path.exists():
        return math.nan, math.nan
    m = pd.read_csv(path)
    row = m[m.epoch == epoch]
    if row.empty:
        return math.nan, math.nan
    return float(row.val_auc.iloc[0]), float(row.val_loss.iloc[0])


def unit_scores(units: list[Unit], results: dict[str, dict], epoch: int
                ) -> list[tuple[float, float]]:
    """One (AUC, loss) per unit that did not fail, at ``epoch`` (0-based)."""
    return [score_at(results[u.name]["folder"], epoch) for u in units
            if results.get(u.name, {}).get("status") != "failed"]


def promote(units: list[Unit], results: dict[str, dict], rung: int, rate: int,
            sizes: Callable[[str], int],
            scores_of: Callable[[list[Unit], dict[str, dict], int], list] = unit_scores
            ) -> tuple[list[Unit], list[Unit]]:
    """Successive halving at ``rung`` epochs, per stain: configurations (architecture × bag
    size) are ranked by the mean of their scores at that epoch (``scores_of(units, results,
    epoch)``: by default each unit's validation AUC, over magnifications and repeats; ties to
    lower loss, smaller model, smaller bag) and the best ``ceil(n / rate)`` go on. Returns
    (kept units, stopped units)."""
    kept, stopped = [], []
    for stain in sorted({u.stain for u in units}):
        mine = [u for u in units if u.stain == stain]
        scores: dict[tuple, list[tuple[float, float]]] = {}
        for config in {u.configuration[1:] for u in mine}:
            scores[config] = scores_of([u for u in mine if u.configuration[1:] == config],
                                       results, rung - 1)
        configs = {u.configuration[1:] for u in mine}
        ranked = []
        for config in configs:
            values = [s for s in scores.get(config, []) if not math.isnan(s[0])]
            auc = sum(v[0] for v in values) / len(values) if values else -1.0
            loss = sum(v[1] for v in values) / len(values) if values else math.inf
            ranked.append((-round(auc, 9), round(loss, 9), sizes(config[0]), config[1], config))
        ranked.sort()
        keep = {r[-1] for r in ranked[:max(1, math.ceil(len(ranked) / rate))] if r[0] != 1.0}
        for u in mine:
            (kept if u.configuration[1:] in keep else stopped).append(u)
    return kept, stopped
