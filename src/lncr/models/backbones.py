"""Tile encoders ("backbones") by name, built as the authors built them, with their pretrained
weights resolved the libraries' way.

The six published architectures are registered with their native input size, the weights the
authors started from, and the authors' projection head (``ModelTrain.py`` of
neolibin/LNCR-DL-model):

- AlexNet and VGG-11: the whole classifier (fc6, fc7, fc8 and their dropout) is replaced by one
  ``Linear(9216 → L)`` / ``Linear(25088 → L)`` on the flattened pooled feature map;
- DenseNet-121, Inception-V3 and ResNet-50: ``classifier``/``fc`` → ``Linear(features → L)``;
- every such projection has Xavier-normal weights (biases keep PyTorch's default);
- ViT (``vit_base_patch16_384``, the default ViT): timm's ViT-B/16 at 384 px with the
  ImageNet-21k → 1k "augreg" weights the authors loaded (the tag is pinned, not timm's
  default of the day), **keeping** its 1000-way head and adding ``Linear(1000 → 128)``
  (PyTorch's default initialisation, as the authors left it);
- ``vit_b_16``: torchvision's ViT-B/16 at 384 px with its 384-px weights (SWAG, fine-tuned end
  to end on ImageNet-1k) and the head replaced by ``Linear(768 → L)`` — an alternative for
  users without timm's weights, not the published model.

Inception-V3's pretrained weights need the auxiliary classifier at construction; it is dropped
afterwards, as the authors' torchvision did (``aux_logits=False`` after loading).

Any other torchvision classification model is accepted by its torchvision name (its last Linear
layer becomes the projection) and any timm model by ``timm:<name>`` (pooled features →
projection). ``list_backbones()`` names the registered ones; :func:`check_backbone` builds one on
the meta device (no memory, no download) so a study can be checked before any unit runs.

The torchvision backbones load the weights the authors' ``pretrained=True`` meant:
``IMAGENET1K_V1`` for all five (ResNet-50's ``DEFAULT`` is ``IMAGENET1K_V2``, a later training
recipe, which the authors did not use). Another tag of a registered architecture is named
after a dot — ``resnet50.IMAGENET1K_V2`` (a torchvision enum member) or
``vit_base_patch16_384.orig_in21k_ft_in1k`` (a timm tag) — and is its own architecture in a
sweep, run names and feature caches.

Weights: ``weights="imagenet"`` uses torchvision's weight enum or timm's pretrained tag,
downloading through the library's cache when online (``TORCH_HOME``, ``HF_HOME``); a cached file
is used offline. ``weights=PATH`` loads a local file through the same code (timm's
``pretrained_cfg_overlay=dict(file=PATH)``, which resamples a ViT's position embedding to the
model's size; for torchvision ViTs, torchvision's ``interpolate_embeddings``). ``weights=None``
starts from random initialisation. Offline without a cached or local file,
:class:`WeightsUnavailable` explains both fixes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lncr.models.spec import (
    BACKBONES,
    BackboneSpec,
    HeadRule,
    WeightsUnavailable,
    list_backbones,
    register,
)


def _xavier_linear(features: int, out: int) -> nn.Linear:
    layer = nn.Linear(features, out)
    nn.init.xavier_normal_(layer.weight)  # the authors' init; the bias keeps PyTorch's default
    return layer


def replace_attribute(name: str) -> HeadRule:
    """``model.<name>`` (a Linear) → Xavier-normal ``Linear(in_features → dim)``."""

    def head(model: nn.Module, dim: int) -> nn.Module:
        new = _xavier_linear(getattr(model, name).in_features, dim)
        setattr(model, name, new)
        return new

    return head


def replace_classifier(model: nn.Module, dim: int) -> nn.Module:
    """AlexNet/VGG as published: the whole ``classifier`` → one Xavier-normal
    ``Linear(flattened pooled features → dim)``."""
    first = next(m for m in model.classifier if isinstance(m, nn.Linear))
    model.classifier = _xavier_linear(first.in_features, dim)
    return model.classifier


def replace_last_linear(model: nn.Module, dim: int) -> nn.Module:
    """Other torchvision models (lncr's rule): the last Linear of ``classifier`` → projection."""
    layers = model.classifier
    idx = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
    layers[idx] = _xavier_linear(layers[idx].in_features, dim)
    return layers[idx]


def append_projection(model: nn.Module, dim: int) -> nn.Module:
    """The authors' ViT: keep the 1000-way ImageNet head and add ``Linear(1000 → dim)`` after it
    (PyTorch's default initialisation, as in their code)."""
    projection = nn.Linear(model.num_classes, dim)
    model.lncr_projection = projection
    return projection


def pooled_projection(model: nn.Module, dim: int) -> nn.Module:
    """Any timm model: drop the classifier, project the pooled features."""
    features = model.num_features
    model.reset_classifier(0)
    model.lncr_projection = _xavier_linear(features, dim)
    return model.lncr_projection


def _vit_head(model: nn.Module, dim: int) -> nn.Module:
    model.heads.head = _xavier_linear(model.heads.head.in_features, dim)
    return model.heads.head


def _torchvision(name: str, enum: str, member: str = "DEFAULT", pretrained_kwargs=None,
                 random_kwargs=None, after: Callable[[nn.Module], None] | None = None):
    """A builder: ``"imagenet"`` → the weight enum's member (``tag``, else ``member``;
    downloaded or cached), ``"local"`` → the same construction without weights (a file is
    loaded next), None → random initialisation."""

    def build(weights: str | None, file: str | None = None, tag: str | None = None
              ) -> nn.Module:
        import torchvision

        ctor = getattr(torchvision.models, name)
        if weights == "imagenet":
            model = ctor(weights=getattr(getattr(torchvision.models, enum), tag or member))
        elif weights == "local":
            model = ctor(weights=None, **(pretrained_kwargs or {}))
        else:
            model = ctor(weights=None, **(random_kwargs or {}))
        if after is not None:
            after(model)
        return model

    return build


def _drop_aux(model: nn.Module) -> None:
    """Inception-V3 after loading: the auxiliary classifier only serves ImageNet training."""
    model.aux_logits = False
    model.AuxLogits = None


def _timm(name: str):
    """A builder of timm's ``name`` (``model`` or ``model.tag``); ``tag`` replaces the tag."""

    def build(weights: str | None, file: str | None = None, tag: str | None = None
              ) -> nn.Module:
        try:
            import timm
        except ImportError as exc:
            raise ValueError(f"{name} needs the timm package: pip install timm") from exc
        full = f"{name.partition('.')[0]}.{tag}" if tag else name
        if weights == "local":
            return timm.create_model(full, pretrained=True,
                                     pretrained_cfg_overlay={"file": str(file)})
        return timm.create_model(full, pretrained=weights == "imagenet")

    return build


# The published architectures, at their native input sizes, with the authors' heads.
register(BackboneSpec("alexnet", 224, _torchvision("alexnet", "AlexNet_Weights"),
                      replace_classifier, weights="AlexNet_Weights.IMAGENET1K_V1"))
register(BackboneSpec("densenet121", 224, _torchvision("densenet121", "DenseNet121_Weights"),
                      replace_attribute("classifier"),
                      weights="DenseNet121_Weights.IMAGENET1K_V1"))
register(BackboneSpec(
    "inception_v3", 299,
    _torchvision("inception_v3", "Inception_V3_Weights",
                 pretrained_kwargs={"aux_logits": True, "transform_input": True,
                                    "init_weights": False},
                 # transform_input as torchvision sets it for the weights, in every case, so
                 # that a run's model is rebuilt identically for prediction
                 random_kwargs={"aux_logits": False, "transform_input": True,
                                "init_weights": True}, after=_drop_aux),
    replace_attribute("fc"), weights="Inception_V3_Weights.IMAGENET1K_V1"))
# ``resnet50(pretrained=True)`` in the authors' code: IMAGENET1K_V1, not today's DEFAULT (V2).
register(BackboneSpec("resnet50", 224,
                      _torchvision("resnet50", "ResNet50_Weights", "IMAGENET1K_V1"),
                      replace_attribute("fc"), weights="ResNet50_Weights.IMAGENET1K_V1"))
register(BackboneSpec("vgg11", 224, _torchvision("vgg11", "VGG11_Weights"), replace_classifier,
                      weights="VGG11_Weights.IMAGENET1K_V1"))
register(BackboneSpec("vit_base_patch16_384", 384,
                      _timm("vit_base_patch16_384.augreg_in21k_ft_in1k"),
                      append_projection, package="timm", fixed_input=True, embedding_dim=128,
                      weights="timm vit_base_patch16_384.augreg_in21k_ft_in1k"))
register(BackboneSpec(
    "vit_b_16", 384,
    _torchvision("vit_b_16", "ViT_B_16_Weights", "IMAGENET1K_SWAG_E2E_V1",
                 pretrained_kwargs={"image_size": 384}, random_kwargs={"image_size": 384}),
    _vit_head, fixed_input=True, embedding_dim=128,
    weights="ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1 (384 px)"))
# Small ones for tests and CPU demos.
register(BackboneSpec("resnet18", 224, _torchvision("resnet18", "ResNet18_Weights"),
                      replace_attribute("fc"), weights="ResNet18_Weights.IMAGENET1K_V1"))


def _register_foundation() -> None:
    from lncr.models.foundation import register_foundation_models

    register_foundation_models()


_register_foundation()


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (torchvision and ``timm:`` names resolved too)."""
    if name in BACKBONES:
        return BACKBONES[name]
    if name.startswith("timm:"):
        return _timm_spec(name[5:])
    base, dot, tag = name.partition(".")
    if dot and base in BACKBONES:
        return _tagged(BACKBONES[base], name, tag)
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        model = torchvision.models.get_model(name, weights=None)
        for attr in ("fc", "classifier", "head"):
            layer = getattr(model, attr, None)
            rule = (replace_attribute(attr) if isinstance(layer, nn.Linear) else
                    replace_last_linear if isinstance(layer, nn.Sequential)
                    and any(isinstance(m, nn.Linear) for m in layer) else None)
            if rule is not None:
                enum = type(torchvision.models.get_model_weights(name).DEFAULT).__name__
                return BackboneSpec(name, 224, _torchvision(name, enum), rule,
                                    weights=f"{enum}.DEFAULT")
        raise ValueError(f"torchvision model {name!r} has no recognisable classification head")
    close = difflib.get_close_matches(name, list_backbones(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown architecture {name!r}: {hint}use one of "
                     f"{', '.join(list_backbones())}, another torchvision classification model, "
                     "or timm:<name> (with timm installed)")


def _tagged(spec: BackboneSpec, name: str, tag: str) -> BackboneSpec:
    """A registered architecture with another of its library's pretrained weight tags."""
    import dataclasses
    from functools import partial

    if spec.package == "timm":
        import timm

        base = name.partition(".")[0]
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{base}.*")]
        label = f"timm {base}.{tag}"
    elif spec.package == "torchvision":
        import torchvision

        enum = torchvision.models.get_model_weights(spec.name)
        tags, label = [m for m in enum.__members__ if m != "DEFAULT"], f"{enum.__name__}.{tag}"
    else:
        tags, label = [], ""
    if tag not in tags:
        raise ValueError(f"architecture {name!r}: {spec.name} has no weights tagged {tag!r}; "
                         f"use one of {', '.join(tags) or '(none: it has no tags)'}")
    return dataclasses.replace(spec, name=name, builder=partial(spec.builder, tag=tag),
                               weights=label)


def _timm_spec(name: str) -> BackboneSpec:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"timm:{name} needs the timm package: pip install timm") from exc
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" (did you mean timm:{close[0]}?)" if close else ""
        raise ValueError(f"timm has no model {name!r}{hint}")
    cfg = timm.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    return BackboneSpec(f"timm:{name}", size, _timm(name), pooled_projection, "timm",
                        fixed_input="vit" in name or "deit" in name,
                        weights=f"timm {name} (default tag)")


class TileEncoder(nn.Module):
    """A backbone whose classification head is a linear map to ``embedding_dim`` features."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, head: nn.Module | None = None):
        super().__init__()
        self.model, self.spec = model, spec
        self._head = {id(p) for p in head.parameters()} if head is not None else set()
        self._projection = (head,)  # a tuple: the layer is registered inside ``model`` only

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The (pre-trained) backbone's parameters: everything but the new projection head."""
        return [p for p in self.parameters() if id(p) not in self._head]

    def head_parameters(self) -> list[nn.Parameter]:
        """The projection head's parameters (the layer lncr added)."""
        return [p for p in self.parameters() if id(p) in self._head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        projection = getattr(self.model, "lncr_projection", None)
        return projection(out) if projection is not None else out

    @property
    def projection(self) -> nn.Module:
        """The projection layer lncr added (inside the model, or after it): the layer the
        head rule returned."""
        if self._projection[0] is None:
            raise RuntimeError(f"{self.spec.name}: built without a projection layer")
        return self._projection[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the frozen backbone gives the projection: (M, F) features of (M, 3, H, W)
        inputs. ``project(features(x))`` is ``forward(x)``; the feature cache stores these."""
        if getattr(self.model, "lncr_projection", None) is not None:
            return self.model(x)
        seen: list[torch.Tensor] = []
        hook = self.projection.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            self.model(x)
        finally:
            hook.remove()
        return seen[0]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The projection alone: cached features (M, F) → embeddings (M, L)."""
        return self.projection(features)


def build_backbone(name: str, embedding_dim: int, weights: str | Path | None = None
                   ) -> TileEncoder:
    """Build ``name`` with the authors' head: a projection to ``embedding_dim`` features.

    ``weights``: ``None`` (random), ``"imagenet"`` (the library's pretrained weights, from its
    cache offline) or a path to a local weights file of the same architecture (its original
    head is discarded).

    >>> enc = build_backbone("resnet18", 128)
    >>> enc(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 128])
    """
    spec = backbone_spec(name)
    if weights == "imagenet":
        model = _download(spec)
    elif weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(f"weights file {path} does not exist")
        if spec.package == "timm":
            model = _timm_local(spec, path)
        else:
            model = spec.builder("local")
    else:
        model = spec.builder(None)
    head = spec.head(model, embedding_dim)
    if weights not in (None, "imagenet") and spec.package != "timm":
        from lncr.models.local_weights import load_local

        load_local(model, spec, Path(weights), head)
    return TileEncoder(model, spec, head)


def _download(spec: BackboneSpec) -> nn.Module:
    try:
        return spec.builder("imagenet")
    except (OSError, RuntimeError) as exc:  # URLError and the hub's offline errors: OSError
        raise WeightsUnavailable(
            f"cannot download the pretrained weights of {spec.name} ({spec.weights}): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. Either connect "
            "once so that the library caches them (TORCH_HOME for torchvision, HF_HOME for "
            f"timm), or pass a local file with --weights PATH (weights saved from {spec.name}), "
            "or train from scratch with --no-pretrained") from exc


def _timm_local(spec: BackboneSpec, path: Path) -> nn.Module:
    """timm's own loader for a local file (it resamples a ViT's position embedding)."""
    try:
        return spec.builder("local", file=str(path))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise WeightsUnavailable(f"{path} does not fit {spec.name}: {exc}") from exc


def check_backbone(name: str, embedding_dim: int = 512) -> None:
    """Build ``name`` on the meta device (no memory, no weights): raises ValueError with the
    fix when the name is unknown or the model cannot be built."""
    try:
        with torch.device("meta"):
            build_backbone(name, embedding_dim, None)
    except ValueError:
        raise
    except Exception as exc:  # a registry entry that cannot be built is a bug to report
        raise ValueError(f"architecture {name!r} cannot be built: {type(exc).__name__}: "
                         f"{exc}") from exc
