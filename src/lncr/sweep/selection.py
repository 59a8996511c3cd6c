"""From unit results to the sweep's summary table and its choice of final configuration.

The rule (also in ``selection.json`` and docs/sweep.md):

1. A unit's score is the validation AUC of its **last epoch** (the final weights, no
   checkpoint picked on validation data), over the development validation patients of its
   split. Only units that trained every epoch count (failed units, and units stopped early by
   successive halving, do not).
2. **Architecture, per stain**: the architecture with the highest mean score over all its
   units of that stain (every magnification, bag size and repeat). Ties (equal to 1e-9) go to
   the lower mean validation loss, then to the smaller model (fewer parameters), then to the
   name.
3. **Bag size, for the study**: for each bag size, the mean over stains of the mean score of
   that stain's chosen architecture with that bag size (every magnification and repeat).
   Highest wins; ties go to the smaller bag.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

RULE = ("unit score = validation AUC of the last epoch; architecture per stain = highest mean "
        "score over that stain's units (all magnifications, bag sizes, repeats), ties to lower "
        "mean validation loss, then fewer parameters, then name; bag size = highest mean over "
        "stains of the chosen architecture's mean score with that bag size, ties to the smaller "
        "bag; only units that trained every epoch count")
KFOLD_RULE = ("score = AUC of the pooled last-epoch out-of-fold predictions of every development "
              "patient with tiles, per configuration × magnification × repeat; architecture per "
              "stain = highest mean score over that stain's scores (all magnifications, bag "
              "sizes, repeats), ties to lower mean pooled loss, then fewer parameters, then name; "
              "bag size = highest mean over stains of the chosen architecture's mean score with "
              "that bag size, ties to the smaller bag; only configurations whose every fold "
              "trained every epoch count")


def rule_text(validation: str) -> str:
    """The selection rule of the ``sweep.validation`` protocol."""
    return KFOLD_RULE if validation == "kfold" else RULE


def parameter_count(architecture: str, settings) -> int:
    """Parameters of the bag model with ``architecture`` (built on the meta device: no memory,
    no weights). Unknown or unbuildable models count as infinitely large."""
    return _parameter_count(architecture, settings.embedding_dim, settings.transformer_layers,
                            settings.transformer_heads, settings.feedforward_dim,
                            settings.dropout)


@functools.lru_cache(maxsize=64)
def _parameter_count(architecture: str, embedding_dim: int, layers: int, heads: int,
                     feedforward_dim: int, dropout: float) -> int:
    """Counted once per model shape: the selection is applied once per repeat (stability)."""
    import torch

    from lncr.models.mil import build_mil

    try:
        with torch.device("meta"):
            model = build_mil(architecture, embedding_dim, layers, heads, None, feedforward_dim,
                              dropout)
        return int(sum(p.numel() for p in model.parameters()))
    except Exception:  # a name the registry cannot build: never preferred on a tie
        return 2 ** 62


def summary_table(units: pd.DataFrame) -> pd.DataFrame:
    """One row per stain × magnification × architecture × bag size: unit counts by status,
    mean ± s.d. of the last-epoch validation AUC and loss over finished repeats, and each
    repeat's values (``val_auc_r0``, ``val_loss_r0``, …)."""
    keys = ["stain", "magnification", "architecture", "bag_size"]
    rows = []
    repeats = sorted(units.repeat.unique())
    for key, part in units.groupby(keys, sort=False):
        done = part[part.status == "done"]
        row = dict(zip(keys, key))
        row.update(units=len(part), done=len(done), failed=int((part.status == "failed").sum()),
                   stopped=int((part.status == "stopped").sum()),
                   epochs_trained=int(part.epochs_trained.sum()),
                   mean_val_auc=float(done.val_auc.mean()) if len(done) else math.nan,
                   sd_val_auc=float(done.val_auc.std(ddof=1)) if len(done) > 1 else math.nan,
                   mean_val_loss=float(done.val_loss.mean()) if len(done) else math.nan,
                   sd_val_loss=float(done.val_loss.std(ddof=1)) if len(done) > 1 else math.nan)
        by_repeat = part.set_index("repeat")
        for r in repeats:
            ok = r in by_repeat.index and by_repeat.loc[r, "status"] == "done"
            row[f"val_auc_r{r}"] = float(by_repeat.loc[r, "val_auc"]) if ok else math.nan
            row[f"val_loss_r{r}"] = float(by_repeat.loc[r, "val_loss"]) if ok else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def complete_failures(units: pd.DataFrame) -> dict[str, list]:
    """What failed as a whole: architectures none of whose units ran (in any stain or
    magnification), and stain × magnification × architecture groups and stain ×
    magnification groups all of whose units failed. Empty lists when nothing did."""
    failed = units.status == "failed"

    def whole(keys: list[str]) -> list:
        groups = failed.groupby([units[k] for k in keys]).all()
        return [list(k) if isinstance(k, tuple) else k for k in groups[groups].index]

    return {"architectures": whole(["architecture"]),
            "stain_magnification_architectures": whole(["stain", "magnification",
                                                        "architecture"]),
            "stain_magnifications": whole(["stain", "magnification"])}


def failure_lines(failures: dict[str, list]) -> list[str]:
    """One readable line per complete failure of :func:`complete_failures`."""
    lines = [f"every unit of architecture {a} failed: the selection ranked the others only"
             for a in failures.get("architectures", [])]
    lines += [f"every unit of {s} {m} failed: no model for that stain × magnification"
              for s, m in failures.get("stain_magnifications", [])]
    arch = set(failures.get("architectures", []))
    sm = {tuple(x) for x in failures.get("stain_magnifications", [])}
    lines += [f"every unit of {a} at {s} {m} failed"
              for s, m, a in failures.get("stain_magnification_architectures", [])
              if a not in arch and (s, m) not in sm]
    return lines


def select(units: pd.DataFrame, settings, rule: str = RULE) -> dict:
    """Apply the rule to the scores (one row per unit, or per configuration × repeat with
    k-fold: :func:`lncr.sweep.criterion.criterion_table`; ``settings``: the training
    settings, for model sizes). Returns the choice and the evidence; raises if none
    finished."""
    done = units[units.status == "done"]
    if done.empty:
        raise ValueError("no sweep unit finished every epoch: nothing to select from (see "
                         "units.csv for the failures)")
    architectures: dict[str, str] = {}
    arch_evidence: dict[str, list[dict]] = {}
    sizes: dict[str, int] = {}
    for stain, part in done.groupby("stain", sort=True):
        candidates = []
        for arch, p in part.groupby("architecture", sort=True):
            if arch not in sizes:
                sizes[arch] = parameter_count(arch, settings)
            candidates.append({"architecture": arch, "mean_val_auc": float(p.val_auc.mean()),
                               "sd_val_auc": float(p.val_auc.std(ddof=1)) if len(p) > 1
                               else math.nan,
                               "mean_val_loss": float(p.val_loss.mean()), "units": len(p),
                               "parameters": sizes[arch]})
        ranked = sorted(candidates, key=lambda c: (
            -round(np.nan_to_num(c["mean_val_auc"], nan=-1), 9),
            round(np.nan_to_num(c["mean_val_loss"], nan=1e9), 9),
            c["parameters"], c["architecture"]))
        architectures[stain] = ranked[0]["architecture"]
        arch_evidence[stain] = ranked
    bag_rows = []
    for bag in sorted(done.bag_size.unique()):
        per_stain = {}
        for stain, arch in architectures.items():
            p = done[(done.stain == stain) & (done.architecture == arch) & (done.bag_size == bag)]
            if len(p):
                per_stain[stain] = float(p.val_auc.mean())
        if per_stain:
            bag_rows.append({"bag_size": int(bag),
                             "mean_val_auc": _mean_defined(list(per_stain.values())),
                             "per_stain": per_stain})
    ranked_bags = sorted(bag_rows, key=lambda b: (
        -round(np.nan_to_num(b["mean_val_auc"], nan=-1), 9), b["bag_size"]))
    return {"rule": rule, "architectures": architectures,
            "bag_size": ranked_bags[0]["bag_size"],
            "decided_by": {"architecture": {s: architecture_decision(r)
                                            for s, r in arch_evidence.items()},
                           "bag_size": bag_decision(ranked_bags)},
            "evidence": {"architecture": arch_evidence, "bag_size": ranked_bags}}


def _mean_defined(values: list[float]) -> float:
    """The mean of the defined values; NaN (without a warning) when there are none."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def _same(a: float, b: float) -> bool:
    """Equal as the rule compares them (to 1e-9; two undefined values are equal)."""
    return (math.isnan(a) and math.isnan(b)) or round(a, 9) == round(b, 9)


def architecture_decision(ranked: list[dict]) -> str:
    """What chose a stain's architecture: the AUC, or — on a tie — which tie-break."""
    if len(ranked) == 1:
        return "the only architecture with finished units"
    first, second = ranked[0], ranked[1]
    auc = ("no validation AUC (one outcome in the validation slides)"
           if math.isnan(first["mean_val_auc"]) else
           f"mean validation AUC tied at {first['mean_val_auc']:.3f}")
    if not _same(first["mean_val_auc"], second["mean_val_auc"]):
        return "mean validation AUC"
    if not _same(first["mean_val_loss"], second["mean_val_loss"]):
        return f"{auc} with {second['architecture']}: the lower mean validation loss"
    if first["parameters"] != second["parameters"]:
        return f"{auc} and loss with {second['architecture']}: the smaller model"
    return f"{auc}, loss and size with {second['architecture']}: the name"


def bag_decision(ranked: list[dict]) -> str:
    """What chose the bag size: the AUC, or a tie that went to the smaller bag."""
    if len(ranked) == 1:
        return "the only bag size with finished units"
    first, second = ranked[0], ranked[1]
    if not _same(first["mean_val_auc"], second["mean_val_auc"]):
        return "mean validation AUC over stains"
    what = ("no validation AUC" if math.isnan(first["mean_val_auc"]) else
            f"mean validation AUC tied at {first['mean_val_auc']:.3f}")
    return f"{what} with bag {second['bag_size']}: the smaller bag"
