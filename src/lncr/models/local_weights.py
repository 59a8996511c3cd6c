"""Loading a local weights file into a torchvision backbone whose head lncr replaced: the
file's own classification head is discarded, every other tensor must fit."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lncr.models.spec import BackboneSpec, WeightsUnavailable

#: Parameter-name prefixes of the classification heads a local weights file may carry and the
#: projection replaces (or, for Inception-V3, the dropped auxiliary classifier).
HEAD_PREFIXES = ("fc.", "classifier.", "heads.", "head.", "AuxLogits.")


def read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_local(model: nn.Module, spec: BackboneSpec, path: Path, head: nn.Module) -> None:
    """Load a state dict into a model whose head was already replaced: every tensor but the
    head's must be present with its shape. A torchvision ViT's position embedding is
    interpolated to the model's image size (e.g. a 224-px file into the 384-px model)."""
    state = read_state(path)
    if getattr(model, "image_size", None) and "encoder.pos_embedding" in state:
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(model.image_size, model.patch_size, state)
    own = model.state_dict()
    mine = {id(p) for p in head.parameters()}
    head_keys = {n for n, p in model.named_parameters() if id(p) in mine}
    wrong = [f"{k} {tuple(state[k].shape)} ≠ {tuple(own[k].shape)}" for k in state
             if k in own and k not in head_keys and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and k not in head_keys]
    extra = [k for k in state if k not in own and not k.startswith(HEAD_PREFIXES)]
    if wrong or missing or extra:
        raise WeightsUnavailable(
            f"{path} does not fit {spec.name}: {len(missing)} missing, {len(extra)} unexpected "
            f"and {len(wrong)} mis-shaped tensors (e.g. {(wrong + missing + extra)[:3]}); save "
            f"the state dict of a {spec.name} model (torchvision's or timm's layout)")
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in head_keys},
                          strict=False)
