"""Several bag models on cached features as one stacked computation.

The units of a sweep that share a stain × magnification × encoder differ only in seed, bag
size and split; trained one at a time, each step of their small head is bound by PyTorch's
per-operation overhead, not by arithmetic. Here the parameters of G heads of
:func:`lncr.models.mil.build_head_mil` are stacked along a leading unit axis and one step of
all G is one forward and one backward pass of about a hundred batched operations, whatever G.

The forward pass is the published head written with batched operations: projection,
transformer encoder layers (post-norm, GELU, self-attention with ``heads`` heads), final
LayerNorm, attention pooling, classifier. Dropout uses masks drawn for each unit from its own
generator, in the order, shapes and memory layout in which ``nn.TransformerEncoderLayer``
draws them from the global generator when the unit trains alone; a stacked unit therefore
sees exactly the masks it would alone, and its results equal the lone run's to rounding
(tested: predictions and metrics to 1e-5).

Written here rather than with ``torch.func.vmap`` over ``functional_call``: under vmap the
dropout masks would come from one random stream for all units, and every unit would train
differently from its lone run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lncr.models.mil import AttentionMIL


@dataclass(frozen=True)
class HeadShape:
    """What the stacked computation needs to know of the heads (all G alike)."""

    layers: int
    heads: int
    dim: int
    feedforward: int
    dropout: float
    final_eps: float

    @classmethod
    def of(cls, model: AttentionMIL) -> "HeadShape":
        if model.transformer.__class__.__name__ != "TransformerEncoder":
            return cls(0, 1, model.attention.in_features, 0, 0.0, model.transformer.eps)
        first = model.transformer.layers[0]
        return cls(len(model.transformer.layers), first.self_attn.num_heads,
                   first.self_attn.embed_dim, first.linear1.out_features,
                   float(first.dropout.p), model.transformer.norm.eps)


def stack_parameters(models: list[AttentionMIL]) -> dict[str, torch.Tensor]:
    """The trainable parameters of ``models`` stacked along a new first axis (leaf tensors
    that require gradients), by their names in the model."""
    named = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([p[name].detach() for p in named]).requires_grad_(True)
            for name, first in named[0].items() if first.requires_grad}


def unstack_parameters(stacked: dict[str, torch.Tensor], models: list[AttentionMIL]) -> None:
    """Copy the stacked parameters back into each model."""
    with torch.no_grad():
        for i, model in enumerate(models):
            for name, p in model.named_parameters():
                if name in stacked:
                    p.copy_(stacked[name][i])


def draw_masks(shape: HeadShape, generators: list[torch.Generator], bags: int, tiles: int,
               device: torch.device) -> list[dict[str, torch.Tensor]] | None:
    """Each layer's dropout masks for every unit, scaled by 1 / (1 - p), stacked over units:
    ``[{"attention": (G, B, H, N, N), "attention_out": (G, B, N, D), "feedforward":
    (G, B, N, FF), "out": (G, B, N, D)}, …]``. Drawn unit by unit from its generator in the
    order and memory layout ``nn.TransformerEncoderLayer`` uses in training: the attention
    weights, then the attention output (laid out sequence-first by ``nn.MultiheadAttention``
    with ``batch_first``), then the feed-forward activations and output."""
    p = shape.dropout
    if p == 0.0 or not shape.layers:
        return None
    keep, n, b, d, h = 1.0 - p, tiles, bags, shape.dim, shape.heads

    def mask(size: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
        return torch.empty(size, device=device).bernoulli_(keep, generator=g).div_(keep)

    per_layer: list[dict[str, list[torch.Tensor]]] = [
        {"attention": [], "attention_out": [], "feedforward": [], "out": []}
        for _ in range(shape.layers)]
    for g in generators:
        for masks in per_layer:
            masks["attention"].append(mask((b, h, n, n), g))
            masks["attention_out"].append(mask((n, b, d), g).transpose(0, 1))
            masks["feedforward"].append(mask((b, n, shape.feedforward), g))
            masks["out"].append(mask((b, n, d), g))
    return [{k: torch.stack(v) for k, v in masks.items()} for masks in per_layer]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (G, …, in) with per-unit weight (G, out, in) and bias (G, out): a batched matrix
    product, which rounds as ``nn.Linear`` does — except for a single output, where
    ``nn.Linear`` takes a matrix-vector kernel that the batched product does not reproduce
    bit for bit, so each unit gets its own ``F.linear`` (two such layers: the attention score
    and the classifier)."""
    g = x.shape[0]
    if weight.shape[1] == 1:
        return torch.stack([F.linear(x[i], weight[i], bias[i]) for i in range(g)])
    flat = x.reshape(g, -1, x.shape[-1])
    out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.reshape(*x.shape[:-1], weight.shape[1])


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                ) -> torch.Tensor:
    """``nn.LayerNorm`` of every unit with its own weight and bias. One fused call per unit:
    the fused kernel's backward rounds differently from any batched decomposition, and a lone
    run uses the fused kernel."""
    return torch.stack([F.layer_norm(x[i], x.shape[-1:], weight[i], bias[i], eps)
                        for i in range(x.shape[0])])


def _self_attention(h: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, shape: HeadShape,
                    masks: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """``nn.MultiheadAttention`` (batch first, no mask) of every unit. The scores are computed
    in the memory layout that module gives them — sequence first — and as PyTorch's
    ``scaled_dot_product_attention`` computes them in training (its math kernel: query and key
    each scaled by the square root of 1/√dh), so every unit's numbers are rounded exactly as
    in its lone run, whatever the group."""
    g, b, n, d = h.shape
    heads, dh = shape.heads, d // shape.heads
    # The projection of the tiles in the module's order (sequence first): the weights'
    # gradient sums over the rows in that order.
    qkv = _linear(h.transpose(1, 2), p[prefix + "self_attn.in_proj_weight"],
                  p[prefix + "self_attn.in_proj_bias"])
    # (G, N, B, 3, D) → (3, N, G·B, D): each of q, k, v sequence-first, as the module has them
    packed = qkv.view(g, n, b, 3, d).permute(3, 1, 0, 2, 4).reshape(3, n, g * b, d).contiguous()
    q, k, v = (t.view(n, g * b * heads, dh).transpose(0, 1).view(g * b, heads, n, dh)
               for t in packed)
    root = math.sqrt(1.0 / math.sqrt(dh))
    weights = torch.softmax(torch.matmul(q * root, k.transpose(-2, -1) * root), dim=-1)
    if masks is not None:
        weights = weights * masks["attention"].reshape(g * b, heads, n, n)
    attended = torch.matmul(weights, v)  # (G·B, H, N, dh)
    rows = attended.permute(2, 0, 1, 3).reshape(n, g, b, d).permute(1, 0, 2, 3)
    out = _linear(rows, p[prefix + "self_attn.out_proj.weight"],
                  p[prefix + "self_attn.out_proj.bias"]).transpose(1, 2)  # (G, B, N, D)
    if masks is not None:
        out = out * masks["attention_out"]
    return out


def _encoder_layer(h: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, shape: HeadShape,
                   masks: dict[str, torch.Tensor] | None) -> torch.Tensor:
    attended = _self_attention(h, p, prefix, shape, masks)
    h = _layer_norm(h + attended, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"], 1e-5)
    inner = F.gelu(_linear(h, p[prefix + "linear1.weight"], p[prefix + "linear1.bias"]))
    if masks is not None:
        inner = inner * masks["feedforward"]
    out = _linear(inner, p[prefix + "linear2.weight"], p[prefix + "linear2.bias"])
    if masks is not None:
        out = out * masks["out"]
    return _layer_norm(h + out, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"], 1e-5)


def stacked_forward(p: dict[str, torch.Tensor], features: torch.Tensor, shape: HeadShape,
                    masks: list[dict[str, torch.Tensor]] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """G heads on their own bags: features (G, B, N, F) → (logits (G, B), attention
    (G, B, N)). ``masks`` from :func:`draw_masks` in training; None in evaluation."""
    h = _linear(features, p["encoder.projection.weight"], p["encoder.projection.bias"])
    if shape.layers:
        for i in range(shape.layers):
            h = _encoder_layer(h, p, f"transformer.layers.{i}.", shape,
                               masks[i] if masks is not None else None)
        h = _layer_norm(h, p["transformer.norm.weight"], p["transformer.norm.bias"],
                        shape.final_eps)
    else:
        h = _layer_norm(h, p["transformer.weight"], p["transformer.bias"], shape.final_eps)
    scores = _linear(h, p["attention.weight"], p["attention.bias"]).squeeze(-1)
    attention = torch.softmax(scores, dim=-1)
    pooled = torch.einsum("gbn,gbnd->gbd", attention, h)
    logits = _linear(pooled, p["classifier.weight"], p["classifier.bias"]).squeeze(-1)
    return logits, attention
