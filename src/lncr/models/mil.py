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

    def from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bags of cached backbone features (B, N, F) → (logits (B,), attention (B, N)): the
        projection and the bag part, for a frozen backbone (:mod:`lncr.features`)."""
        b, n = features.shape[:2]
        return self.head(self.encoder.project(features.flatten(0, 1)).view(b, n, -1))

    @staticmethod
    def probability(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class FeatureModel(nn.Module):
    """The trainable part of an :class:`AttentionMIL` whose backbone is frozen, as a module of
    its own: ``forward`` takes cached features (B, N, F). It shares the parameters of ``mil``
    (training it trains ``mil``) and holds only the trainable ones, so DistributedDataParallel
    and optimisers see nothing of the backbone."""

    def __init__(self, mil: AttentionMIL):
        super().__init__()
        self.projection = mil.encoder.projection
        self.transformer, self.attention = mil.transformer, mil.attention
        self.classifier = mil.classifier
        self._mil = [mil]  # not a submodule: its backbone stays out of this module

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mil[0].from_features(features)


def build_mil(architecture: str, embedding_dim: int = 512, layers: int = 2, heads: int = 8,
              weights=None, feedforward_dim: int = 2048, dropout: float = 0.1) -> AttentionMIL:
    """The published model for ``architecture`` (the ViTs default to 128 features, as
    published, when ``embedding_dim`` is left at 512)."""
    embedding_dim = published_embedding_dim(architecture, embedding_dim)
    encoder = build_backbone(architecture, embedding_dim, weights)
    return AttentionMIL(encoder, embedding_dim, layers, heads, feedforward_dim, dropout)


class ProjectionEncoder(nn.Module):
    """The encoder of a bag model trained on cached features: the projection alone (the
    frozen backbone ran once, in ``lncr embed``). Built without the backbone, so a sweep unit
    of a foundation model never holds its billion parameters."""

    def __init__(self, features: int, embedding_dim: int, xavier: bool = True):
        super().__init__()
        self.projection = nn.Linear(features, embedding_dim)
        if xavier:  # the head rules' initialisation (the published ViT's keeps the default)
            nn.init.xavier_normal_(self.projection.weight)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return []

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this bag model was trained on cached features and has no "
                           "backbone: load it with lncr.training.predict.load_run")


def build_head_mil(architecture: str, features: int, embedding_dim: int = 512, layers: int = 2,
                   heads: int = 8, feedforward_dim: int = 2048, dropout: float = 0.1
                   ) -> AttentionMIL:
    """The bag model of ``architecture`` without its backbone, taking ``features``-wide
    cached features (:class:`ProjectionEncoder`)."""
    from lncr.models.backbones import append_projection

    embedding_dim = published_embedding_dim(architecture, embedding_dim)
    xavier = backbone_spec(architecture).head is not append_projection
    encoder = ProjectionEncoder(features, embedding_dim, xavier)
    return AttentionMIL(encoder, embedding_dim, layers, heads, feedforward_dim, dropout)


def with_backbone_keys(model: AttentionMIL, state: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """A :func:`build_head_mil` state renamed for the full ``model``: its projection's
    tensors under the name the projection has inside the backbone."""
    target = model.encoder.projection
    name = next(n for n, m in model.named_modules() if m is target)
    prefix = "encoder.projection."
    return {(name + "." + k[len(prefix):] if k.startswith(prefix) else k): v
            for k, v in state.items()}


def published_embedding_dim(architecture: str, embedding_dim: int) -> int:
    """``embedding_dim``, or the architecture's published width (128 for the ViTs) when it is
    left at the default 512."""
    spec = backbone_spec(architecture)
    if embedding_dim == 512 and spec.embedding_dim is not None:
        return spec.embedding_dim
    if embedding_dim == 512 and spec.fixed_input and architecture.startswith("timm:"):
        return 128  # other timm ViTs: as the published ViT
    return embedding_dim


def backbone_keys(model: AttentionMIL) -> set[str]:
    """The state-dict keys of the backbone: the encoder's, but for the projection lncr
    added."""
    projection = {id(t) for t in model.encoder.projection.state_dict(keep_vars=True).values()}
    return {k for k, v in model.state_dict(keep_vars=True).items()
            if k.startswith("encoder.") and id(v) not in projection}


def load_head_state(model: AttentionMIL, state: dict[str, torch.Tensor]) -> None:
    """Load a state without the backbone (a head trained on cached features, renamed by
    :func:`with_backbone_keys`) or a whole state into ``model``; every tensor outside the
    backbone must be there."""
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - backbone_keys(model)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"the checkpoint does not fit the model: missing {sorted(missing)[:3]}"
                           f", unexpected {sorted(result.unexpected_keys)[:3]}")


def freeze_batch_norm(model: nn.Module) -> int:
    """Put every BatchNorm layer in evaluation mode (running statistics used, not updated);
    returns how many. Call after ``model.train()``.

    With one bag per step, a bag's tiles all come from one slide, so batch statistics would
    normalise away exactly the slide-level differences the model must learn."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)
