"""What an architecture is (:class:`BackboneSpec`) and the registry of them, below the modules
that build backbones (:mod:`lncr.models.backbones`, :mod:`lncr.models.foundation`) and load
local weights (:mod:`lncr.models.local_weights`), which all register or read specs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lncr.errors import BadInput


class WeightsUnavailable(BadInput, RuntimeError):
    """Pretrained weights cannot be downloaded (offline) and no local file was given, or a local
    file does not fit the architecture."""


#: ``head(model, embedding_dim)`` replaces the model's classification head in place and returns
#: the new projection layer.
HeadRule = Callable[[nn.Module, int], nn.Module]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one architecture."""

    name: str
    input_size: int  # native input size (pixels)
    builder: Callable[..., nn.Module]  # (None | "imagenet" | "local", file=None) -> model
    head: HeadRule
    package: str = "torchvision"
    fixed_input: bool = False  # True when the model only accepts ``input_size`` (ViT)
    embedding_dim: int | None = None  # the published feature width, if it differs from 512
    weights: str = ""  # which pretrained weights "imagenet" means
    resize_to_native: bool = False  # the crop is resized to ``input_size`` (foundation models)
    stats: tuple | None = None  # the channel mean and s.d. the encoder requires, if any


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add an architecture to the registry (one entry per name)."""
    BACKBONES[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """The registered architecture names (any torchvision classifier and ``timm:<name>`` are
    accepted too)."""
    return sorted(BACKBONES)
