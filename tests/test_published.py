"""Describe the published configuration as users run it: the six backbones with their
pretrained weights (served offline from the libraries' own download caches), the authors'
heads, 512-px tiles at native input sizes, `lncr train --pretrained` and the published sweep
grid with no failed unit."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch
from filelock import FileLock
from torch import nn
from typer.testing import CliRunner

import pretrained_cache
from conftest import _shared_tmp, validated_copy
from lncr.cli import app
from lncr.models.backbones import BACKBONES, backbone_spec, build_backbone
from lncr.study.config import SweepSettings
from lncr.study.validate import Study

pytestmark = pytest.mark.slow  # trains real models

PUBLISHED = list(SweepSettings().architectures)
CACHED = PUBLISHED + ["vit_b_16", "resnet50.IMAGENET1K_V2"]
#: Parameters of the projection heads as the authors' ModelTrain.py builds them.
HEADS = {"alexnet": 9216 * 512 + 512, "densenet121": 1024 * 512 + 512,
         "inception_v3": 2048 * 512 + 512, "resnet50": 2048 * 512 + 512,
         "vgg11": 25088 * 512 + 512, "vit_base_patch16_384": 1000 * 128 + 128,
         "vit_b_16": 768 * 128 + 128, "resnet50.IMAGENET1K_V2": 2048 * 512 + 512}
#: One epoch on four patients (one of each outcome trains: below the default minimum of two).
QUICK = ["training.epochs=1", "training.warmup_epochs=0", "training.eval_tiles=2",
         "training.loader_workers=0", "training.min_patients_per_outcome=1"]


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> tuple:
    """torchvision's and timm's download caches holding every published architecture."""
    root = _shared_tmp(tmp_path_factory) / "weights-cache"
    with FileLock(str(root) + ".lock"):
        done = root / "probes.pt"
        if not done.exists():
            probes = pretrained_cache.fill(root, CACHED)
            torch.save(probes, done)
    return root, torch.load(done, weights_only=True)


@pytest.fixture(scope="session")
def tiled512(phantom, tmp_path_factory):
    """Four development patients of the phantom (two of each label; two train, two validate),
    their H&E slides tiled at 40x in 512-px tiles, as published (no colour normalisation: it is
    not what this checks). Small, because a ViT-B step at 384 px costs seconds on a CPU."""
    from lncr.tiling.run import tile_study

    root = _shared_tmp(tmp_path_factory)
    out = root / "phantom-512"
    with FileLock(str(root / "phantom-512.lock")):
        if not (out / "lncr-output" / "tiles" / "index.csv").exists():
            shutil.copytree(phantom, out, dirs_exist_ok=True)
            patients = pd.read_csv(out / "patients.csv", dtype=str)
            dev = patients[patients.cohort == "development"]
            keep = pd.concat([dev[dev.label == label].head(2) for label in ("0", "1")])
            keep.to_csv(out / "patients.csv", index=False)
            slides = pd.read_csv(out / "slides.csv", dtype=str)
            slides[(slides.stain == "HE") & slides.patient_id.isin(keep.patient_id)].to_csv(
                out / "slides.csv", index=False)
            (out / "study.yaml").write_text(
                "patients: patients.csv\nslides: slides.csv\nstains: [HE]\n"
                "magnification: {powers: [40]}\nsplit: {val_fraction: 0.5}\n"
                "tiling: {tile_size: 512, encoding: jpeg, normalisation: {HE: none}}\n")
            tile_study(Study.load(out / "study.yaml"), workers=2)
    return out


def _head(encoder) -> list[nn.Parameter]:
    return encoder.head_parameters()


class DescribePretrainedBackbones:
    @pytest.mark.parametrize("name", CACHED)
    def it_loads_the_cached_weights_at_native_size_with_the_authors_head(
            self, name, weights_cache, monkeypatch):
        root, probes = weights_cache
        pretrained_cache.use(root, monkeypatch)
        dim = backbone_spec(name).embedding_dim or 512
        encoder = build_backbone(name, dim, "imagenet")
        state = encoder.model.state_dict()
        for key, value in probes[name].items():
            assert torch.equal(state[key], value), key  # the cached file was loaded
        assert sum(p.numel() for p in _head(encoder)) == HEADS[name]
        size = backbone_spec(name).input_size
        with torch.no_grad():
            assert encoder.eval()(torch.rand(2, 3, size, size)).shape == (2, dim)

    def it_loads_resnet50s_v1_weights_unless_a_tag_names_v2(self, weights_cache, monkeypatch):
        root, probes = weights_cache
        pretrained_cache.use(root, monkeypatch)
        v1 = build_backbone("resnet50", 512, "imagenet").model.state_dict()
        v2 = build_backbone("resnet50.IMAGENET1K_V2", 512, "imagenet").model.state_dict()
        key = next(iter(probes["resnet50"]))
        assert torch.equal(v1[key], probes["resnet50"][key])
        assert torch.equal(v2[key], probes["resnet50.IMAGENET1K_V2"][key])
        assert not torch.equal(v1[key], v2[key])

    def it_replaces_alexnet_and_vgg_classifiers_by_one_xavier_linear(self):
        for name, features in (("alexnet", 9216), ("vgg11", 25088)):
            torch.manual_seed(0)
            encoder = build_backbone(name, 512)
            linears = [m for m in encoder.model.modules() if isinstance(m, nn.Linear)]
            assert len(linears) == 1 and linears[0].in_features == features
            xavier = math.sqrt(2.0 / (features + 512))
            assert float(linears[0].weight.std()) == pytest.approx(xavier, rel=0.02)

    def it_keeps_the_vit_head_and_appends_the_authors_projection(self):
        encoder = build_backbone("vit_base_patch16_384", 128)
        assert encoder.model.head.out_features == 1000
        assert encoder.model.lncr_projection.in_features == 1000
        # PyTorch's default init (uniform ±1/√1000), as the authors left it
        assert float(encoder.model.lncr_projection.weight.abs().max()) <= 1 / math.sqrt(1000)

    def it_drops_inception_v3s_auxiliary_classifier_after_loading(self, weights_cache,
                                                                  monkeypatch):
        pretrained_cache.use(weights_cache[0], monkeypatch)
        encoder = build_backbone("inception_v3", 512, "imagenet")
        assert encoder.model.AuxLogits is None and not encoder.model.aux_logits
        assert encoder.model.transform_input  # as torchvision's weights expect
        assert build_backbone("inception_v3", 512).model.transform_input  # rebuilt alike

    @pytest.mark.parametrize("name,source", [("vit_b_16", "tv"),
                                             ("vit_base_patch16_384", "timm")])
    def it_resamples_a_224_px_vit_weights_file_to_384_px(self, name, source, tmp_path):
        import timm
        import torchvision

        torch.manual_seed(0)
        small = (torchvision.models.vit_b_16() if source == "tv"
                 else timm.create_model("vit_base_patch16_224"))
        path = tmp_path / "vit224.pt"
        torch.save(small.state_dict(), path)
        encoder = build_backbone(name, 128, path)
        state = encoder.model.state_dict()
        if source == "tv":
            assert state["encoder.pos_embedding"].shape == (1, 577, 768)
            key = "encoder.layers.encoder_layer_0.mlp.0.weight"
        else:
            assert state["pos_embed"].shape == (1, 577, 768)
            key = "blocks.0.mlp.fc1.weight"
        assert torch.equal(state[key], small.state_dict()[key])

    def it_explains_the_fix_when_the_weights_cannot_be_had_offline(self, tmp_path,
                                                                   monkeypatch):
        from lncr.models.backbones import WeightsUnavailable

        pretrained_cache.use(tmp_path, monkeypatch)  # empty caches
        with pytest.raises(WeightsUnavailable, match="--weights PATH"):
            build_backbone("vit_base_patch16_384", 128, "imagenet")


class DescribePublishedTraining:
    @pytest.mark.parametrize("name", PUBLISHED)
    def it_trains_one_epoch_from_512_px_tiles_with_pretrained_weights(
            self, name, weights_cache, tiled512, tmp_path, monkeypatch):
        pretrained_cache.use(weights_cache[0], monkeypatch)
        study = validated_copy(tiled512, tmp_path / "study")
        sets = [a for s in QUICK for a in ("--set", s)]
        result = CliRunner().invoke(app, [
            "train", str(study), "--stain", "HE", "--magnification", "40x", "--architecture",
            name, "--bag-size", "2", "--pretrained", "--device", "cpu"] + sets)
        assert result.exit_code == 0, result.output
        run = study.parent / "lncr-output" / "runs" / "HE" / "40x" / f"{name}-b2-s0"
        config = json.loads((run / "config.json").read_text())
        assert config["weights"] == "imagenet" and config["tile_size"] == 512
        native = 384 if BACKBONES[name].fixed_input else 299
        assert config["geometry"] == {"crop": 384, "size": native}
        assert config["precision"] == "fp32" and config["settings"]["augment"] is False
        metrics = pd.read_csv(run / "metrics.csv")
        assert len(metrics) == 1 and math.isfinite(metrics.train_loss.iloc[0])
        assert (run / "done.json").exists()


class DescribePublishedSweep:
    def it_runs_every_published_architecture_with_no_failed_unit(
            self, weights_cache, tiled512, tmp_path, monkeypatch):
        pretrained_cache.use(weights_cache[0], monkeypatch)
        study = validated_copy(tiled512, tmp_path / "study")
        sets = QUICK + ["sweep.bag_sizes=[1]", "sweep.repeats=1", "training.eval_tiles=1"]
        result = CliRunner().invoke(app, ["sweep", str(study), "--no-final", "--workers", "1",
                                          "--device", "cpu"]
                                    + [a for s in sets for a in ("--set", s)])
        assert result.exit_code == 0, result.output
        folder = study.parent / "lncr-output" / "sweep"
        units = pd.read_csv(folder / "units.csv")
        assert sorted(units.architecture) == sorted(PUBLISHED)
        assert (units.status == "done").all(), units.error.tolist()
        selection = json.loads((folder / "selection.json").read_text())
        assert selection["status"] == "complete" and selection["failure_lines"] == []
        assert {c["architecture"] for c in selection["evidence"]["architecture"]["HE"]} \
            == set(PUBLISHED)


class DescribeArchitectureChecks:
    def it_refuses_an_unknown_architecture_before_any_unit_runs(self, tiled512, tmp_path):
        study = validated_copy(tiled512, tmp_path / "study")
        result = CliRunner().invoke(app, ["validate", str(study), "--no-files", "--set",
                                          "sweep.architectures=[resnet5O, densenet121]"])
        assert result.exit_code != 0
        assert "resnet5O" in result.output and "did you mean 'resnet50'" in result.output

    def it_names_a_timm_model_that_does_not_exist(self, tiled512, tmp_path):
        study = validated_copy(tiled512, tmp_path / "study")
        result = CliRunner().invoke(app, ["validate", str(study), "--no-files", "--set",
                                          "training.architecture=timm:vit_base_patch16_385"])
        assert result.exit_code != 0 and "vit_base_patch16_384" in result.output
