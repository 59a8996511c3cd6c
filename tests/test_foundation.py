"""Describe the pathology foundation-model registry, offline: every entry is built with random
weights of its architecture (no download, no gated access)."""

from __future__ import annotations

import pytest
import torch

from lncr.data.inputs import input_geometry, run_stats
from lncr.models.backbones import WeightsUnavailable, backbone_spec, build_backbone
from lncr.models.foundation import FOUNDATION_MODELS, build_foundation
from lncr.study.config import TrainingSettings

NAMES = sorted(FOUNDATION_MODELS)


@pytest.mark.parametrize("name", NAMES)
def it_builds_every_entry_at_its_authors_size_with_its_feature_width(name):
    model = FOUNDATION_MODELS[name]
    with torch.device("meta"):  # the full-size model, without memory or weights
        encoder = build_backbone(name, 64, None)
        x = torch.zeros(2, 3, model.input_size, model.input_size)
        assert tuple(encoder.features(x).shape) == (2, model.features)
        assert tuple(encoder(x).shape) == (2, 64)


@pytest.mark.parametrize("name", NAMES)
def it_pools_tokens_as_the_authors_do(name):
    model = FOUNDATION_MODELS[name]
    torch.manual_seed(0)
    small = build_foundation(model, None, depth=1).eval()  # one block: same tokens, fast
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        pooled = small(x)
        tokens = small.model.forward_features(x)
    cls = tokens[:, 0]
    if model.pooling == "cls_mean":  # class token ⊕ mean of the patch tokens (no registers)
        patches = tokens[:, small.model.num_prefix_tokens:]
        assert patches.shape[1] == (224 // 14) ** 2
        assert torch.allclose(pooled, torch.cat([cls, patches.mean(1)], -1))
    else:
        assert torch.allclose(pooled, cls)


@pytest.mark.parametrize("name", NAMES)
def it_uses_the_authors_normalisation_and_input_size(name):
    model = FOUNDATION_MODELS[name]
    settings = TrainingSettings(architecture=name, channel_stats="published")
    mean, std = run_stats(settings, "HE", [])  # the card's, whatever channel_stats says
    assert (tuple(mean), tuple(std)) == model.stats
    geometry = input_geometry(settings, 512)
    assert (geometry.crop, geometry.size) == (384, model.input_size)


def it_loads_a_local_weights_file_through_timm(tmp_path):
    model = FOUNDATION_MODELS["virchow2"]
    torch.manual_seed(1)
    source = build_foundation(model, None, depth=1).eval()
    path = tmp_path / "virchow2.pth"
    torch.save(source.model.state_dict(), path)
    loaded = build_foundation(model, "local", str(path), depth=1).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))


def it_explains_how_to_get_a_gated_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="--weights PATH"):
        build_backbone("uni", 8, "imagenet")
    assert "gated" in backbone_spec("uni").weights
