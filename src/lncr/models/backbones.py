"""Tile encoders ("backbones") by name, with their pretrained weights resolved the library's way.

The published architectures are registered with their native input size and where their
classification head is; any other torchvision classification model is accepted by its
torchvision name, and any timm model by ``timm:<name>`` when timm is installed. Each backbone's
head is replaced by a linear layer to ``embedding_dim`` features.

Weights: ``weights="imagenet"`` uses torchvision's weight enum (``DEFAULT``) or timm's
pretrained tag, downloading through the library's cache when online; ``weights=PATH`` loads a
local state dict (a file saved from the same architecture); ``weights=None`` starts from
random initialisation (tests). Offline without a cached file, :class:`WeightsUnavailable`
explains both fixes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class WeightsUnavailable(RuntimeError):
    """Pretrained weights cannot be downloaded (offline) and no local file was given."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one architecture."""

    name: str
    input_size: int  # native input size (pixels)
    builder: Callable[[object], nn.Module]  # weights enum value or None -> model
    head: Callable[[nn.Module], tuple[int, Callable[[nn.Module, nn.Module], None]]]
    weights_enum: str | None = None  # torchvision enum class name
    package: str = "torchvision"
    fixed_input: bool = False  # True when the model only accepts ``input_size`` (ViT)


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add an architecture to the registry (one entry per name)."""
    BACKBONES[spec.name] = spec
    return spec


def _classifier_last(model: nn.Module):
    """Head = the last Linear of ``model.classifier`` (AlexNet, VGG)."""
    layers = model.classifier
    idx = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))

    def replace(m: nn.Module, new: nn.Module) -> None:
        m.classifier[idx] = new

    return layers[idx].in_features, replace


def _attribute(name: str):
    def head(model: nn.Module):
        def replace(m: nn.Module, new: nn.Module) -> None:
            setattr(m, name, new)

        return getattr(model, name).in_features, replace

    return head


def _vit_head(model: nn.Module):
    def replace(m: nn.Module, new: nn.Module) -> None:
        m.heads.head = new

    return model.heads.head.in_features, replace


def _tv(name: str, enum: str, size: int, head, fixed: bool = False, **kwargs) -> BackboneSpec:
    def build(weights):
        import torchvision

        return getattr(torchvision.models, name)(weights=weights, **kwargs)

    return BackboneSpec(name, size, build, head, enum, fixed_input=fixed)


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (torchvision and ``timm:`` names resolved too)."""
    return _resolve_spec(name)


# The published architectures (torchvision), at their native input sizes.
register(_tv("alexnet", "AlexNet_Weights", 224, _classifier_last))
register(_tv("densenet121", "DenseNet121_Weights", 224, _attribute("classifier")))
# Inception-V3: the auxiliary classifier is only used by ImageNet training; dropped here.
register(_tv("inception_v3", "Inception_V3_Weights", 299, _attribute("fc"), aux_logits=False,
             init_weights=False))
register(_tv("resnet50", "ResNet50_Weights", 224, _attribute("fc")))
register(_tv("vgg11", "VGG11_Weights", 224, _classifier_last))
register(_tv("vit_b_16", "ViT_B_16_Weights", 384, _vit_head, fixed=True, image_size=384))
# Small ones for tests and CPU demos.
register(_tv("resnet18", "ResNet18_Weights", 224, _attribute("fc")))


def _resolve_spec(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES[name]
    if name.startswith("timm:"):
        return _timm_spec(name[5:])
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        model = torchvision.models.get_model(name, weights=None)
        for attr in ("fc", "classifier", "head"):
            layer = getattr(model, attr, None)
            if isinstance(layer, nn.Linear):
                return BackboneSpec(name, 224, lambda w, n=name: torchvision.models.get_model(
                    n, weights=w), _attribute(attr), "DEFAULT")
            if isinstance(layer, nn.Sequential) and any(isinstance(m, nn.Linear) for m in layer):
                return BackboneSpec(name, 224, lambda w, n=name: torchvision.models.get_model(
                    n, weights=w), _classifier_last, "DEFAULT")
        raise ValueError(f"torchvision model {name!r} has no recognisable classification head")
    known = ", ".join(sorted(BACKBONES))
    raise ValueError(f"unknown architecture {name!r}: use one of {known}, another torchvision "
                     "classification model, or timm:<name> (with timm installed)")


def _timm_spec(name: str) -> BackboneSpec:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"timm:{name} needs the timm package: pip install timm") from exc

    def build(weights):
        return timm.create_model(name, pretrained=weights is not None)

    def head(model: nn.Module):
        def replace(m: nn.Module, new: nn.Module) -> None:
            m.reset_classifier(0)
            m.lncr_projection = new  # applied after the pooled features, see TileEncoder

        return model.num_features, replace

    cfg = timm.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    return BackboneSpec(f"timm:{name}", size, build, head, None, "timm",
                        fixed_input="vit" in name or "deit" in name)


def _pretrained_weights(spec: BackboneSpec):
    if spec.package == "timm":
        return "imagenet"
    import torchvision

    return torchvision.models.get_model_weights(spec.name).DEFAULT \
        if spec.weights_enum == "DEFAULT" else getattr(torchvision.models, spec.weights_enum).DEFAULT


class TileEncoder(nn.Module):
    """A backbone whose classification head is a linear map to ``embedding_dim`` features."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, head: nn.Module | None = None):
        super().__init__()
        self.model, self.spec = model, spec
        self._head = {id(p) for p in head.parameters()} if head is not None else set()

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The (pre-trained) backbone's parameters: everything but the new projection head."""
        return [p for p in self.parameters() if id(p) not in self._head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        projection = getattr(self.model, "lncr_projection", None)
        return projection(out) if projection is not None else out


def build_backbone(name: str, embedding_dim: int, weights: str | Path | None = None
                   ) -> TileEncoder:
    """Build ``name`` with its head replaced by ``Linear(features, embedding_dim)``.

    ``weights``: ``None`` (random), ``"imagenet"`` (the library's pretrained weights) or a path
    to a local state dict of the same architecture (its original head is discarded).

    >>> enc = build_backbone("resnet18", 128)            # doctest: +SKIP
    >>> enc(torch.zeros(2, 3, 224, 224)).shape            # doctest: +SKIP
    torch.Size([2, 128])
    """
    spec = _resolve_spec(name)
    if weights == "imagenet":
        try:
            model = spec.builder(_pretrained_weights(spec))
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise WeightsUnavailable(
                f"cannot download ImageNet weights for {spec.name} ({exc}). Either connect "
                "once so that the library caches them, or pass a local file with --weights "
                f"PATH (a state dict saved from {spec.name}), or train from scratch with "
                "--no-pretrained") from exc
    else:
        model = spec.builder(None)
        if weights is not None:
            path = Path(weights)
            if not path.exists():
                raise WeightsUnavailable(f"weights file {path} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            missing, unexpected = model.load_state_dict(state, strict=False)
            if len(missing) > 4 or len(unexpected) > 4:  # tolerate only a different head
                raise WeightsUnavailable(
                    f"{path} does not fit {spec.name}: {len(missing)} missing and "
                    f"{len(unexpected)} unexpected tensors (e.g. {(missing + unexpected)[:3]})")
    features, replace = spec.head(model)
    head = nn.Linear(features, embedding_dim)
    replace(model, head)
    return TileEncoder(model, spec, head)
