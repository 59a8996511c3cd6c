"""Pointing game on a phantom: do the explanations point at the planted lesions?

Two checks, each against what pointing at random would score on the same slides:

- **attention**: per slide, the fraction of its top-``k`` tiles by relative attention that
  contain lesion (any lesion pixel in the tile's mask box). Random baseline: the fraction of
  all the slide's tiles that contain lesion — the expected hit rate of ``k`` random tiles.
- **Grad-CAM**: per explained tile that contains lesion, whether the map's maximum falls on a
  lesion (``tolerance``: one mask pixel). Random baseline: the fraction of the tile's points
  within the same tolerance of a lesion — the chance that a uniformly random point hits.

Slides (tiles) without any lesion are left out: there is nothing to point at (the usual rule
of the pointing game). The paired comparison across slides (tiles) is a one-sided Wilcoxon
signed-rank test.
"""

from __future__ import annotations

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
                       top_k: int) -> tuple[dict, pd.DataFrame]:
    """``slides``: (patient, stain, every tile's scores). Summary and one row per slide."""
    from lncr.explain.scores import influential

    rows = []
    for patient, stain, scores in slides:
        lesion = truth.lesion_fraction(patient, stain, scores.x, scores.y, scores.size0) > 0
        if not lesion.any():
            continue
        top = influential(scores, top_k)
        top_lesion = truth.lesion_fraction(patient, stain, top.x, top.y, top.size0) > 0
        rows.append({"patient_id": patient, "stain": stain, "tiles": len(scores),
                     "hit_rate": float(top_lesion.mean()), "random_baseline": float(
                         lesion.mean())})
    table = pd.DataFrame(rows, columns=["patient_id", "stain", "tiles", "hit_rate",
                                        "random_baseline"])
    return _paired(table.hit_rate, table.random_baseline), table


def cam_pointing(truth: PhantomTruth, cams: pd.DataFrame, tolerance: float | None = None
                 ) -> tuple[dict, pd.DataFrame]:
    """``cams``: rows of ``gradcam.csv`` (patient_id, stain, x, y, size0, peak_x, peak_y)."""
    tolerance = truth.downsample if tolerance is None else tolerance
    rows = []
    for (patient, stain), part in cams.groupby(["patient_id", "stain"]):
        fraction = truth.lesion_fraction(patient, stain, part.x, part.y, part.size0)
        chance = truth.lesion_fraction(patient, stain, part.x, part.y, part.size0, tolerance)
        hit = truth.on_lesion(patient, stain, part.peak_x, part.peak_y, tolerance)
        for f, c, h, index in zip(fraction, chance, hit, part["index"]):
            if f > 0:
                rows.append({"patient_id": patient, "stain": stain, "index": int(index),
                             "hit": float(h), "lesion_fraction": float(f),
                             "random_baseline": float(c)})
    table = pd.DataFrame(rows, columns=["patient_id", "stain", "index", "hit",
                                        "lesion_fraction", "random_baseline"])
    return _paired(table.hit, table.random_baseline), table
