"""The numeric precision of a model on a device: the autocast type and its recorded name."""

from __future__ import annotations

import torch


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision type on CUDA (``auto``: bf16 where supported, else fp16); None = fp32.
    The CPU always trains in fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if precision == "fp16" else torch.bfloat16


def precision_name(amp: torch.dtype | None) -> str:
    return str(amp).replace("torch.", "") if amp else "fp32"
