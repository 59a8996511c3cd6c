"""How much memory a group of stacked runs needs, and how many fit on a device.

An estimate from the head's shape, not a measurement: per run, its own parameters and two
optimiser moments (3 copies, float32) and their stacked copies with the gradients (4 more), and
per step the activations autograd
keeps for the backward pass — per tile and layer about a dozen embedding-wide vectors, two
feed-forward-wide ones and the attention weights with their dropout mask (2 × heads × tiles) —
with dropout masks and the attention matrices counted twice for safety. A group is split
(:func:`fitting_size`) so that its estimate stays under half of what the device has free.
"""

from __future__ import annotations

import os

import torch

from lncr.training.stacked_head import HeadShape

#: Bytes of a float32.
FLOAT = 4
#: The share of the free memory a group may plan to use.
SHARE = 0.5


def head_parameters(features: int, shape: HeadShape) -> int:
    """Trainable parameters of one head (projection, encoder layers, norms, pooling)."""
    d, ff = shape.dim, shape.feedforward
    layer = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d
    return features * d + d + shape.layers * layer + 2 * d + 2 * (d + 1)


def run_bytes(features: int, shape: HeadShape, bag_size: int, bags_per_step: int) -> int:
    """Estimated bytes one run adds to a stacked group."""
    tokens = bag_size * bags_per_step
    state = 7 * head_parameters(features, shape)
    per_layer = tokens * (12 * shape.dim + 2 * shape.feedforward
                          + 4 * shape.heads * bag_size)
    activations = tokens * (features + 4 * shape.dim) + max(1, shape.layers) * per_layer
    return FLOAT * (state + 2 * activations)


def free_bytes(device: torch.device) -> int:
    """What the device has free: CUDA's own figure, or the system's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume 4 GiB
        return 4 << 30


def fitting_size(runs: int, per_run: int, free: int, share: float = SHARE) -> int:
    """How many runs of ``per_run`` bytes a group may hold (at least one)."""
    return max(1, min(runs, int(free * share) // max(1, per_run)))
