"""Score every tile of a slide with a trained model: where it looked, and what moved it.

The slide's tiles are dealt into interleaved chunks exactly as ``lncr predict --tiles all``
does (chunk ``c`` of ``k`` holds tiles ``c, c+k, …``; each chunk is one bag, the slide's
probability is the mean over chunks). For each tile:

- ``attention``: its attention weight within its chunk's bag (the softmax over the bag, so the
  weights of a chunk sum to 1); ``relative_attention`` = attention × chunk length, so 1 means
  "an average tile" whatever the chunk size;
- ``effect``: the chunk's probability of complete response with the tile minus without it
  (leave-one-out, the rest of the bag unchanged): positive tiles push towards CR, negative ones
  towards non-response. This is the tile's effect *in the bag context* — the transformer lets
  tiles change each other's embeddings, so it is not a property of the tile alone.

**Influential tiles** of a slide are its ``explain.top_k`` tiles that are the strongest
evidence for the outcome being explained (``explain.target``: the predicted outcome by default),
by the rule ``explain.influence``:

- ``effect`` (default): the signed leave-one-out effect toward that outcome (``effect`` for CR,
  ``-effect`` for non-CR) — the tiles whose removal would most weaken the explained outcome;
- ``attention_effect``: relative attention × that signed effect;
- ``attention``: relative attention alone (the tiles the bag representation pools, whatever
  they argue for; lncr's rule before 0.2).

The default was chosen by the pointing game on the phantom's lesion masks
(``bench/explain_checks.py phantom``, docs/explain.md). Attention stays a column of every
table.

Cost: every tile goes through the backbone **once** (in batches); the leave-one-out bags re-use
the embeddings and run only the transformer/attention head (one batched call per chunk), which
is small beside the backbone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lncr.data.bags import BagDataset, SlideEntry, chunk_count, chunk_members
from lncr.data.inputs import DeviceInput
from lncr.features.store import FeatureFile
from lncr.models.mil import AttentionMIL
from lncr.tiling.store import TileStore

SCORE_COLUMNS = ["index", "x", "y", "size0", "chunk", "attention", "relative_attention",
                 "effect", "chunk_probability"]


@torch.no_grad()
def embed_tiles(model: AttentionMIL, inputs: DeviceInput, dataset: BagDataset, slide: int,
                batch: int = 64) -> torch.Tensor:
    """(n, D) embeddings of every tile of one slide, centred crops as in evaluation."""
    n = dataset.entries[slide].n_tiles
    parts = []
    for start in range(0, n, batch):
        bag, _, _, _ = dataset.bag(slide, np.arange(start, min(n, start + batch)), epoch=0)
        parts.append(model.encoder(inputs(bag[None])[0]))
    return torch.cat(parts)


@torch.no_grad()
def leave_one_out(model: AttentionMIL, embeddings: torch.Tensor) -> tuple[float, np.ndarray,
                                                                          np.ndarray]:
    """One bag's probability, attention (n,) and each tile's effect (n,): probability with it
    minus without it."""
    logits, attention = model.head(embeddings[None])
    probability = float(torch.sigmoid(logits)[0])
    n = embeddings.shape[0]
    if n == 1:
        return probability, attention[0].cpu().numpy(), np.array([probability - 0.5])
    keep = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    without = embeddings[None].expand(n, -1, -1)[keep].view(n, n - 1, -1)
    others, _ = model.head(without)
    effect = probability - torch.sigmoid(others).cpu().numpy()
    return probability, attention[0].cpu().numpy(), effect


def slide_scores(model: AttentionMIL, inputs: DeviceInput, entry: SlideEntry, crop: int,
                 chunk_size: int, features: Path | None = None) -> tuple[pd.DataFrame, float]:
    """Every tile's scores (:data:`SCORE_COLUMNS`) and the slide's probability (the mean over
    chunks, as ``lncr predict --tiles all``). A model trained on cached features takes the
    slide's ``features`` file (view 0) instead of running its backbone."""
    model.eval()
    if features is not None:
        with FeatureFile(features) as f, torch.no_grad():
            cached = torch.from_numpy(f.read(np.arange(entry.n_tiles)))
            embeddings = model.encoder.project(cached.to(inputs.device))
    else:
        dataset = BagDataset([entry], 1, train=False, crop=crop)
        embeddings = embed_tiles(model, inputs, dataset, 0)
    n = entry.n_tiles
    chunks = chunk_count(n, chunk_size)
    with TileStore(entry.store) as store:
        coords = store.coords.set_index("index")
    out = []
    probabilities = []
    for c in range(chunks):
        members = chunk_members(n, chunks, c)
        probability, attention, effect = leave_one_out(model, embeddings[members])
        probabilities.append(probability)
        out.append(pd.DataFrame({
            "index": members, "chunk": c, "attention": attention,
            "relative_attention": attention * len(members), "effect": effect,
            "chunk_probability": probability}))
    table = pd.concat(out).sort_values("index").reset_index(drop=True)
    table = table.join(coords[["x", "y", "size0"]], on="index")
    return table[SCORE_COLUMNS], float(np.mean(probabilities))


INFLUENCE_RULES = ("effect", "attention_effect", "attention")


def influence_score(scores: pd.DataFrame, rule: str, outcome: int) -> pd.Series:
    """Each tile's evidence for ``outcome`` (1 = CR, 0 = non-CR) under ``rule``."""
    toward = scores.effect if outcome == 1 else -scores.effect
    if rule == "effect":
        return toward
    if rule == "attention_effect":
        return scores.relative_attention * toward
    if rule == "attention":
        return scores.relative_attention
    raise ValueError(f"explain.influence {rule!r}: use one of {', '.join(INFLUENCE_RULES)}")


def influential(scores: pd.DataFrame, top_k: int, rule: str = "attention",
                outcome: int = 1) -> pd.DataFrame:
    """The ``top_k`` tiles by :func:`influence_score` (ties: the larger absolute effect for
    ``attention``, the larger relative attention otherwise; then the lower index), with the
    score in an ``influence`` column."""
    tie = scores.effect.abs() if rule == "attention" else scores.relative_attention
    order = scores.assign(influence=influence_score(scores, rule, outcome), _tie=tie).sort_values(
        ["influence", "_tie", "index"], ascending=[False, False, True])
    return order.drop(columns="_tie").head(top_k).reset_index(drop=True)
