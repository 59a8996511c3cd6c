"""Pretrained weights offline, the way users get them: the download caches of torchvision
(``$TORCH_HOME/hub/checkpoints/<file of the weight enum's URL>``) and of timm's Hugging Face hub
(``$HF_HOME/hub/models--timm--<name>/snapshots/<rev>/model.safetensors``), filled with seeded
random weights of the same architectures. lncr's real loading code (torchvision weight enums,
``timm.create_model(pretrained=True)``) then finds them without a network."""

from __future__ import annotations

import os
from pathlib import Path

import torch

#: architecture → (torchvision constructor, its kwargs, weight enum member) for the published
#: torchvision backbones.
TORCHVISION = {
    "alexnet": ("alexnet", {}, "AlexNet_Weights.IMAGENET1K_V1"),
    "densenet121": ("densenet121", {}, "DenseNet121_Weights.IMAGENET1K_V1"),
    "inception_v3": ("inception_v3", {"aux_logits": True, "init_weights": False},
                     "Inception_V3_Weights.IMAGENET1K_V1"),
    "resnet50": ("resnet50", {}, "ResNet50_Weights.IMAGENET1K_V1"),  # the authors'
    "resnet50.IMAGENET1K_V2": ("resnet50", {}, "ResNet50_Weights.IMAGENET1K_V2"),
    "vgg11": ("vgg11", {}, "VGG11_Weights.IMAGENET1K_V1"),
    "vit_b_16": ("vit_b_16", {"image_size": 384}, "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1"),
}
TIMM = {"vit_base_patch16_384": "vit_base_patch16_384"}
REVISION = "0" * 40


def _enum(member: str):
    import torchvision

    enum, name = member.split(".")
    return getattr(getattr(torchvision.models, enum), name)


def probes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Three backbone tensors of a state dict (first, middle, last; classification heads
    excluded, as lncr replaces them) to recognise it by."""
    from lncr.models.local_weights import HEAD_PREFIXES

    keys = [k for k, v in state.items()
            if v.is_floating_point() and not k.startswith(HEAD_PREFIXES)]
    return {k: state[k].clone() for k in (keys[0], keys[len(keys) // 2], keys[-1])}


def fill(root: Path, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Write the caches under ``root`` (``root/torch``, ``root/hf``) for ``names``; returns the
    probe tensors of each architecture's cached weights."""
    import torchvision

    out = {}
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        if name in TORCHVISION:
            ctor, kwargs, member = TORCHVISION[name]
            state = getattr(torchvision.models, ctor)(weights=None, **kwargs).state_dict()
            path = root / "torch" / "hub" / "checkpoints" / os.path.basename(_enum(member).url)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
        else:
            import timm
            from safetensors.torch import save_file

            model_name = TIMM[name]
            cfg = timm.get_pretrained_cfg(model_name)
            snap = root / "hf" / "hub" / ("models--" + cfg.hf_hub_id.replace("/", "--"))
            (snap / "refs").mkdir(parents=True, exist_ok=True)
            (snap / "refs" / "main").write_text(REVISION)
            (snap / "snapshots" / REVISION).mkdir(parents=True, exist_ok=True)
            state = timm.create_model(model_name).state_dict()
            save_file({k: v.contiguous() for k, v in state.items()},
                      snap / "snapshots" / REVISION / "model.safetensors")
        out[name] = probes(state)
    return out


def use(root: Path, monkeypatch) -> None:
    """Point torchvision's and timm's caches at ``root`` for this test and its children."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(root / "hf" / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
