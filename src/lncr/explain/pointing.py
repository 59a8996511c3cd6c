"""Pointing game on a phantom: do the explanations point at the planted lesions?

Two checks, each against what pointing at random would score on the same slides:

- **influential tiles** (by any ``explain.influence`` rule — attention, signed effect, their
  product — for the outcome the lesions signal): per slide, the fraction of its ``k``
  influential tiles that contain lesion (any lesion pixel in the tile's mask box). Random
  baseline: the fraction of all the slide's tiles that contain lesion — the expected hit rate
  of ``k`` random tiles. Also the mean lesion fraction of the influential tiles against that
  of all tiles (``share_ratio``).
- **CAM** (Grad-CAM and the other methods), three ways, each map over the crop of the tile
  the model saw:

  - ``peak_vs_random_tiles`` — the pointing game as the study's explanation is used: over all
    explained (influential) tiles, whether the map's maximum falls on a lesion (``tolerance``:
    one mask pixel), against a random point of a random tile of the same slide;
  - ``peak_vs_points`` — the strict test of the map alone: over explained tiles that contain
    lesion, the maximum against a random point of the *same* tile (the fraction of its map
    pixels within the tolerance of a lesion);
  - ``energy_vs_uniform`` — the energy-based pointing game (Wang et al., Score-CAM, 2020):
    the share of the map's mass on lesion pixels, against a uniform map's share (the tile's
    lesion fraction). It uses the whole map, not only its argmax, so it is not thrown by
    ties or by a coarse last layer whose maximum falls on a cell centre.

Slides (tiles) without any lesion are left out of the attention, ``peak_vs_points`` and
``energy_vs_uniform`` games: there is nothing to point at (the usual rule). Each paired
comparison across slides (tiles) is a one-sided Wilcoxon signed-rank test.

The maps must explain the outcome the lesions are evidence for
(:meth:`PhantomTruth.lesion_outcome`): a map of P(CR) on a phantom whose lesions signal
non-response rightly points *away* from them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lncr.explain.phantom_truth import PhantomTruth


def _paired(hit: np.ndarray, baseline: np.ndarray) -> dict:
    from scipy.stats import wilcoxon

    hit, baseline = np.asarray(hit, float), np.asarray(baseline, float)
    out = {"n": int(len(hit)), "hit_rate": float(hit.mean()) if len(hit) else float("nan"),
           "random_baseline": float(baseline.mean()) if len(hit) else float("nan"),
           "p_value": float("nan")}
    diff = hit - baseline
    if len(hit) >= 2 and np.any(diff != 0):
        out["p_value"] = float(wilcoxon(hit, baseline, alternative="greater").pvalue)
    out["ratio"] = out["hit_rate"] / out["random_baseline"] if out["random_baseline"] else float(
        "nan")
    return out


def attention_pointing(truth: PhantomTruth, slides: list[tuple[str, str, pd.DataFrame]],
                       top_k: int, rule: str = "attention", outcome: int = 1
                       ) -> tuple[dict, pd.DataFrame]:
    """``slides``: (patient, stain, every tile's scores). The influential tiles by ``rule``
    for ``outcome`` (:func:`lncr.explain.scores.influential`) against all tiles: the share
    holding any lesion (``hit_rate`` vs ``random_baseline``) and the mean lesion fraction
    (``lesion_share`` vs ``mean_lesion_share``). Summary and one row per slide."""
    from lncr.explain.scores import influential

    rows = []
    for patient, stain, scores in slides:
        fraction = truth.lesion_fraction(patient, stain, scores.x, scores.y, scores.size0)
        if not (fraction > 0).any():
            continue
        top = influential(scores, top_k, rule, outcome)
        top_fraction = truth.lesion_fraction(patient, stain, top.x, top.y, top.size0)
        rows.append({"patient_id": patient, "stain": stain, "tiles": len(scores),
                     "hit_rate": float((top_fraction > 0).mean()),
                     "random_baseline": float((fraction > 0).mean()),
                     "lesion_share": float(np.mean(top_fraction)),
                     "mean_lesion_share": float(np.mean(fraction))})
    table = pd.DataFrame(rows, columns=["patient_id", "stain", "tiles", "hit_rate",
                                        "random_baseline", "lesion_share",
                                        "mean_lesion_share"])
    summary = _paired(table.hit_rate, table.random_baseline)
    share = table.mean_lesion_share.mean()
    summary["share_ratio"] = float(table.lesion_share.mean() / share) if share > 0 else math.nan
    return summary, table


def crop_boxes(tiles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 (x0, y0, side) of the centred crop each tile was seen through
    (``crop_fraction`` of its side; 1 when the column is missing)."""
    fraction = tiles["crop_fraction"].to_numpy(float) if "crop_fraction" in tiles else 1.0
    side = tiles.size0.to_numpy(float) * fraction
    offset = (tiles.size0.to_numpy(float) - side) / 2.0
    return tiles.x.to_numpy(float) + offset, tiles.y.to_numpy(float) + offset, side


def random_tile_baseline(truth: PhantomTruth, patient: str, stain: str, tiles: pd.DataFrame,
                         tolerance: float) -> float:
    """The chance that a random point of a random tile of the slide (all ``tiles``, seen
    through their crops) lies within ``tolerance`` of a lesion."""
    x0, y0, side = crop_boxes(tiles)
    return float(truth.lesion_fraction(patient, stain, x0, y0, side, tolerance).mean())


def cam_pointing(truth: PhantomTruth, tiles: pd.DataFrame, maps: np.ndarray,
                 slide_tiles: dict[tuple[str, str], pd.DataFrame] | None = None,
                 tolerance: float | None = None) -> tuple[dict[str, dict], pd.DataFrame]:
    """Score CAM maps against the lesion masks.

    ``tiles``: one row per map (patient_id, stain, index, x, y, size0, crop_fraction);
    ``maps``: (n, h, w), each covering its tile's crop. ``slide_tiles``: every tile of each
    slide, for the random-tile baseline. Three paired comparisons (see the module's doc):
    ``peak_vs_points`` and ``energy_vs_uniform`` over tiles whose crop holds lesion,
    ``peak_vs_random_tiles`` over all explained tiles. A flat map (Grad-CAM's ReLU leaves
    nothing: no evidence for the outcome in the tile) has no maximum nor location: it scores
    what a uniform map would, a random point's chance and the tile's lesion fraction, so it
    neither helps nor hurts; ``flat_maps`` counts them.
    """
    tolerance = truth.downsample if tolerance is None else tolerance
    x0, y0, side = crop_boxes(tiles)
    baselines = {}
    rows = []
    for i, r in enumerate(tiles.itertuples()):
        cam = np.asarray(maps[i], float)
        near = truth.lesion_grid(r.patient_id, r.stain, x0[i], y0[i], side[i], cam.shape,
                                 tolerance)
        on = truth.lesion_grid(r.patient_id, r.stain, x0[i], y0[i], side[i], cam.shape)
        flat = not cam.max() > cam.min()
        hit = float(near.mean()) if flat else float(near.flat[int(np.argmax(cam))])
        energy = float((cam * on).sum() / cam.sum()) if cam.sum() > 0 else float(on.mean())
        key = (r.patient_id, r.stain)
        if key not in baselines:
            everything = (slide_tiles or {}).get(key)
            baselines[key] = (random_tile_baseline(truth, *key, everything, tolerance)
                              if everything is not None else float("nan"))
        rows.append({"patient_id": r.patient_id, "stain": r.stain, "index": int(r.index),
                     "lesion_fraction": float(on.mean()), "flat": flat, "hit": hit,
                     "random_point": float(near.mean()), "energy": energy,
                     "random_tile": baselines[key]})
    table = pd.DataFrame(rows, columns=["patient_id", "stain", "index", "lesion_fraction",
                                        "flat", "hit", "random_point", "energy",
                                        "random_tile"])
    lesioned = table[table.lesion_fraction > 0]
    summaries = {"peak_vs_points": _paired(lesioned.hit, lesioned.random_point),
                 "energy_vs_uniform": _paired(lesioned.energy, lesioned.lesion_fraction)}
    summaries["peak_vs_points"]["flat_maps"] = summaries["energy_vs_uniform"]["flat_maps"] = int(
        lesioned.flat.sum())
    if table.random_tile.notna().all():
        summaries["peak_vs_random_tiles"] = _paired(table.hit, table.random_tile)
        summaries["peak_vs_random_tiles"]["flat_maps"] = int(table.flat.sum())
    return summaries, table
