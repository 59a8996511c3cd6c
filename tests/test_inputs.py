"""Describe what the network sees: crop/resize geometry per architecture, channel statistics
presets, device-side preparation, and the precision chosen per device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lncr.data.inputs import (
    DeviceInput,
    InputGeometry,
    colour_jitter,
    input_geometry,
    preset_stats,
    tile_channel_stats,
)
from lncr.data.precision import autocast_dtype
from lncr.study.config import TrainingSettings
from lncr.training.loop import make_optimiser


class DescribeGeometry:
    def it_crops_384_and_resizes_to_299_on_512_px_tiles_as_published(self):
        g = input_geometry(TrainingSettings(architecture="resnet50"), 512)
        assert (g.crop, g.size, g.resize) == (384, 299, True)

    def it_scales_crop_and_input_with_the_tile_size(self):
        g = input_geometry(TrainingSettings(architecture="resnet18"), 128)
        assert (g.crop, g.size) == (96, 75)

    def it_gives_vit_the_384_px_crop_without_resizing(self):
        g = input_geometry(TrainingSettings(architecture="vit_b_16"), 512)
        assert (g.crop, g.size, g.resize) == (384, 384, False)

    def it_refuses_a_vit_crop_of_another_size_with_the_fix(self):
        with pytest.raises(ValueError, match="only accepts 384-px inputs"):
            input_geometry(TrainingSettings(architecture="vit_b_16"), 256)


class DescribeChannelStatistics:
    def it_offers_the_published_per_stain_constants(self):
        mean, std = preset_stats("published", "MASSON")
        assert mean == [0.6599, 0.5043, 0.6319] and std == [0.2691, 0.3343, 0.2675]
        assert preset_stats("imagenet", "HE")[0] == [0.485, 0.456, 0.406]
        assert preset_stats("computed", "HE") is None

    def it_refuses_published_constants_for_an_unknown_stain(self):
        with pytest.raises(ValueError, match="computed"):
            preset_stats("published", "CD3")

    def it_computes_mean_and_sd_of_tiles(self):
        tiles = [np.full((4, 4, 3), v, np.uint8) for v in (0, 255)]
        mean, std = tile_channel_stats(tiles)
        assert mean == [0.5] * 3 and std == pytest.approx([0.5] * 3)


class DescribeDeviceInput:
    def it_resizes_and_normalises_uint8_bags(self):
        prep = DeviceInput(InputGeometry(crop=8, size=4), [0.5] * 3, [0.25] * 3, "cpu")
        bags = torch.full((2, 3, 3, 8, 8), 255, dtype=torch.uint8)
        x = prep(bags)
        assert x.shape == (2, 3, 3, 4, 4) and torch.allclose(x, torch.full_like(x, 2.0))

    def it_jitters_brightness_contrast_and_saturation_per_image(self):
        x = torch.rand(2, 3, 8, 8)
        same = colour_jitter(x.clone(), torch.ones(2, 3))
        assert torch.allclose(same, x, atol=1e-6)
        darker = colour_jitter(x.clone(), torch.tensor([[0.5, 1, 1], [1, 1, 1]]))
        assert darker[0].mean() < x[0].mean() and torch.allclose(darker[1], x[1], atol=1e-6)
        grey = colour_jitter(x.clone(), torch.tensor([[1, 1, 0.0]] * 2))
        assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6)  # saturation 0 → grey


class DescribePrecisionAndOptimiser:
    def it_trains_in_fp32_on_the_cpu_whatever_is_asked(self):
        for p in ("auto", "fp16", "bf16", "fp32"):
            assert autocast_dtype(p, torch.device("cpu")) is None

    def it_uses_sgd_as_published_and_adam_for_vit(self):
        model = torch.nn.Linear(2, 1)
        assert isinstance(make_optimiser(model, "resnet50", TrainingSettings()), torch.optim.SGD)
        assert isinstance(make_optimiser(model, "vit_b_16", TrainingSettings()), torch.optim.Adam)
        adam = TrainingSettings(optimiser="adam")
        assert isinstance(make_optimiser(model, "resnet18", adam), torch.optim.Adam)
