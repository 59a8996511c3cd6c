"""The published bag model: tile encoder → transformer encoder → attention pooling → P(CR).

The embeddings of the tiles of one bag go through a transformer encoder (2 layers, 8 heads,
GELU, final LayerNorm with eps 1e-6), then attention pooling (a linear score per tile, softmax
over the bag), then a linear layer: one logit per bag, whose sigmoid is the probability of
complete response. The attention weights are returned too (explanations use them). As in the
authors' ``Attention_Gated``, the attention and output layers get Xavier-normal weights and
keep PyTorch's default bias initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from lncr.models.backbones import TileEncoder, backbone_spec, build_backbone


class AttentionMIL(nn.Module):
    """Bag classifier. ``forward(bags)`` takes (B, N, 3, H, W) and returns (logits (B,),
    attention (B, N))."""

    def __init__(self, encoder: TileEncoder, embedding_dim: int, layers: int = 2, heads: int = 8,
                 feedforward_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        if embedding_dim % heads:
            raise ValueError(f"embedding_dim {embedding_dim} must be divisible by the "
                             f"{heads} attention heads")
        self.encoder = encoder
        layer = nn.TransformerEncoderLayer(d_model=embedding_dim, nhead=heads,
                                           dim_feedforward=feedforward_dim, dropout=dropout,
                                           activation="gelu", batch_first=True)
        self.transformer = (nn.TransformerEncoder(layer, num_layers=layers,
                                                  norm=nn.LayerNorm(embedding_dim, eps=1e-6),
                                                  enable_nested_tensor=False)
                            if layers else nn.LayerNorm(embedding_dim))
        self.attention = nn.Linear(embedding_dim, 1)
        self.classifier = nn.Linear(embedding_dim, 1)
        for layer in (self.attention, self.classifier):  # as the published model
            nn.init.xavier_normal_(layer.weight)

    def forward(self, bags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = bags.shape[:2]
        return self.head(self.encoder(bags.flatten(0, 1)).view(b, n, -1))

    def head(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bag part alone: tile embeddings (B, N, D) → (logits (B,), attention (B, N)).
        Explanations embed every tile once and then re-run only this for other bags."""
        hidden = self.transformer(embeddings)
        attention = torch.softmax(self.attention(hidden).squeeze(-1), dim=1)
        pooled = torch.einsum("bn,bnd->bd", attention, hidden)
        return self.classifier(pooled).squeeze(-1), attention

    @staticmethod
    def probability(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


def build_mil(architecture: str, embedding_dim: int = 512, layers: int = 2, heads: int = 8,
              weights=None, feedforward_dim: int = 2048, dropout: float = 0.1) -> AttentionMIL:
    """The published model for ``architecture`` (the ViTs default to 128 features, as
    published, when ``embedding_dim`` is left at 512)."""
    embedding_dim = published_embedding_dim(architecture, embedding_dim)
    encoder = build_backbone(architecture, embedding_dim, weights)
    return AttentionMIL(encoder, embedding_dim, layers, heads, feedforward_dim, dropout)


def published_embedding_dim(architecture: str, embedding_dim: int) -> int:
    """``embedding_dim``, or the architecture's published width (128 for the ViTs) when it is
    left at the default 512."""
    spec = backbone_spec(architecture)
    if embedding_dim == 512 and spec.embedding_dim is not None:
        return spec.embedding_dim
    if embedding_dim == 512 and spec.fixed_input and architecture.startswith("timm:"):
        return 128  # other timm ViTs: as the published ViT
    return embedding_dim


def freeze_batch_norm(model: nn.Module) -> int:
    """Put every BatchNorm layer in evaluation mode (running statistics used, not updated);
    returns how many. Call after ``model.train()``.

    With one bag per step, a bag's tiles all come from one slide, so batch statistics would
    normalise away exactly the slide-level differences the model must learn."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)
