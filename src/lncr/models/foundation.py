"""Pathology foundation models as tile encoders, by name, built as their authors specify.

Each entry gives the Hugging Face hub id (loaded through timm's ``hf-hub:`` support when
online, with the user's access token), the timm architecture and creation arguments of the
model card (used offline with a local weights file, and to check the entry without any
weights), the input size, the normalisation and the token pooling. Their features are far
too costly to fine-tune per sweep unit: freeze them (``training.backbone_lr_factor: 0`` or
``sweep.backbone: frozen``) and train on cached features (docs/embeddings.md).

Every hub model here is **gated**: accept its terms on the model page with an institutional
account, then either log in (``huggingface-cli login``) so timm downloads it, or download the
weights file once and pass it as a local file (``sweep.weights`` / ``--weights``). Licences
differ and several forbid commercial use; each entry names its licence as its card states it
— read the card before use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: H-optimus-0's channel statistics (its model card).
HOPTIMUS_STATS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@dataclass(frozen=True)
class FoundationModel:
    """One foundation model's recipe."""

    name: str
    hub: str  # Hugging Face hub id
    architecture: str  # timm architecture of the same shape
    kwargs: dict = field(default_factory=dict)  # timm creation arguments (model card)
    pooling: str = "model"  # "model": timm's pooled output; "cls_mean": class token ⊕ mean
    stats: tuple = IMAGENET_STATS  # channel mean and s.d. (0-1 scale)
    input_size: int = 224
    features: int = 1024  # width of the pooled features
    licence: str = ""


def _swiglu() -> dict:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


FOUNDATION_MODELS: dict[str, FoundationModel] = {m.name: m for m in (
    FoundationModel("uni", "MahmoodLab/uni", "vit_large_patch16_224",
                    {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                     "dynamic_img_size": True},
                    features=1024, licence="CC-BY-NC-ND-4.0 (gated)"),
    FoundationModel("uni2_h", "MahmoodLab/UNI2-h", "vit_giant_patch14_224",
                    {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                     "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                     "num_classes": 0, "no_embed_class": True, "reg_tokens": 8,
                     "dynamic_img_size": True, "swiglu": True},
                    features=1536, licence="CC-BY-NC-ND-4.0 (gated)"),
    FoundationModel("virchow2", "paige-ai/Virchow2", "vit_huge_patch14_224",
                    {"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                     "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
                     "reg_tokens": 4, "no_embed_class": True, "swiglu": True},
                    pooling="cls_mean", features=2560, licence="CC-BY-NC-ND-4.0 (gated)"),
    FoundationModel("h_optimus_0", "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2",
                    {"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                     "dynamic_img_size": False},
                    stats=HOPTIMUS_STATS, features=1536, licence="Apache-2.0 (gated)"),
    FoundationModel("prov_gigapath", "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2",
                    {"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                     "mlp_ratio": 5.33334, "num_classes": 0, "global_pool": "token"},
                    features=1536, licence="Apache-2.0 (gated)"),
)}


def creation_kwargs(model: FoundationModel, **overrides) -> dict:
    """timm's creation arguments (the SwiGLU MLP resolved to its classes)."""
    kwargs = dict(model.kwargs)
    if kwargs.pop("swiglu", False):
        kwargs.update(_swiglu())
    return {**kwargs, **overrides}


class PooledTokens(nn.Module):
    """A timm ViT whose output is the model's pooled features, or (``cls_mean``) the class
    token concatenated with the mean of the patch tokens (registers left out)."""

    def __init__(self, model: nn.Module, pooling: str, features: int):
        super().__init__()
        self.model, self.pooling, self.num_features = model, pooling, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls_mean":
            tokens = self.model.forward_features(x)
            patches = tokens[:, self.model.num_prefix_tokens:]
            return torch.cat([tokens[:, 0], patches.mean(1)], dim=-1)
        return self.model(x)


def build_foundation(model: FoundationModel, weights: str | None, file: str | None = None,
                     **overrides) -> PooledTokens:
    """The model with its hub weights (``"imagenet"`` means them here), a local file, or
    random initialisation (None); ``overrides`` change creation arguments (tests)."""
    import timm

    kwargs = creation_kwargs(model, **overrides)
    if weights == "imagenet":
        net = timm.create_model(f"hf-hub:{model.hub}", pretrained=True, **kwargs)
    elif weights == "local":
        net = timm.create_model(model.architecture, pretrained=True,
                                pretrained_cfg_overlay={"file": str(file)}, **kwargs)
    else:
        net = timm.create_model(model.architecture, pretrained=False, **kwargs)
    return PooledTokens(net, model.pooling, model.features)


def foundation_projection(model: nn.Module, dim: int) -> nn.Module:
    """The head rule: pooled features → Xavier-normal ``Linear(features → dim)``."""
    projection = nn.Linear(model.num_features, dim)
    nn.init.xavier_normal_(projection.weight)
    model.lncr_projection = projection
    return projection


def register_foundation_models() -> None:
    """Add every entry to the backbone registry (architecture names as the keys here)."""
    from lncr.models.spec import BackboneSpec, register

    for m in FOUNDATION_MODELS.values():
        def build(weights, file=None, _m=m):
            return build_foundation(_m, weights, file)

        register(BackboneSpec(m.name, m.input_size, build, foundation_projection,
                              package="timm", resize_to_native=True, stats=m.stats,
                              weights=f"hf-hub:{m.hub} ({m.licence})"))
