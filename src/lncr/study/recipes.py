"""Named recipes: sets of settings applied beneath a study's own.

``recipe: published`` (in ``study.yaml`` or ``--set recipe=published``) gives every setting
whose lncr default differs from the authors' code (neolibin/LNCR-DL-model) the authors' value,
unless the study sets it explicitly — an explicit setting always wins, and
:func:`recipe_deviations` lists those that differ so ``lncr validate`` can say so.
docs/fidelity.md explains every entry; a test checks that its table and :data:`PUBLISHED`
agree.
"""

from __future__ import annotations

import copy
from typing import Any

#: The authors' values where lncr's defaults differ (dotted keys).
PUBLISHED: dict[str, Any] = {
    # Their 4-GPU DistributedDataParallel with synchronised BatchNorm, one bag per GPU: batch
    # statistics over 4 bags and the mean gradient of 4 bags per step, on one device.
    "training.batch_norm": "train",
    "training.bags_per_step": 4,
    # Per-stain constants hard-coded in ModelTrain.py.
    "training.channel_stats": "published",
    # ModelTrain.py's default bag ("batch") size; the sweep chooses among 8/16/32/64.
    "training.bag_size": 32,
    # ModelTest.py: the Youden threshold of the test cohort's own predictions (optimistic).
    "evaluation.threshold": "cohort_youden",
    # ModelTrain.py's default architecture (--mod inceptionV3) for a lone `lncr train`.
    "training.architecture": "inception_v3",
    # gradCAM.py: the last Conv2d, the probability of CR, no ReLU before rescaling, over the
    # training group's patients.
    "explain.cam_layer": "last_conv",
    "explain.target": "cr",
    "explain.cam_relu": False,
    "explain.cam_patients": "train",
    # Tiles_cluster: Encoder96 as written, the launch script's batch (Cluster.sh, 8 GPUs),
    # and ClusterTest.py's 20,000 t-SNE iterations.
    "explain.cluster_encoder": "published",
    "explain.cluster_batch_size": 128,
    "explain.tsne_iterations": 20000,
}

RECIPES: dict[str, dict[str, Any]] = {"lncr": {}, "published": PUBLISHED}


def _nested(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def merge_under(base: dict, top: dict) -> dict:
    """``base`` overlaid by ``top`` (``top`` wins), recursively; returns a new dict."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_under(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_recipe(data: Any) -> Any:
    """The raw settings mapping with its recipe's values beneath the explicit ones."""
    if not isinstance(data, dict):
        return data
    preset = RECIPES.get(str(data.get("recipe", "lncr")))
    if not preset:
        return data  # "lncr", or an unknown name the field's validation will refuse
    return merge_under(_nested(preset), data)


def _lookup(settings: Any, key: str) -> Any:
    for part in key.split("."):
        settings = getattr(settings, part)
    return settings


def recipe_deviations(config: Any) -> dict[str, tuple[Any, Any]]:
    """Settings of a study with a recipe whose value the study set to something else:
    key → (recipe's value, the study's)."""
    preset = RECIPES.get(config.recipe, {})
    return {key: (value, _lookup(config, key)) for key, value in preset.items()
            if _lookup(config, key) != value}
