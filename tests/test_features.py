"""Describe cached tile features: the embedding stage, its files, and training, prediction and
explanation from them, against the end-to-end frozen path."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST, validated_copy
from lncr.cli import app
from lncr.data.bags import BagDataset
from lncr.data.entries import study_entries
from lncr.data.inputs import DeviceInput, InputGeometry
from lncr.features.bags import FeatureBagDataset
from lncr.features.embed import FeatureCache, embed_entries
from lncr.features.spec import feature_spec, spec_from_config
from lncr.features.store import FeatureFile, FeatureWriter, fingerprint_of
from lncr.layout import Layout
from lncr.models.backbones import build_backbone
from lncr.models.mil import backbone_keys, build_mil, with_backbone_keys
from lncr.paths import resolved
from lncr.study.validate import Study

FROZEN = FAST + ["training.architecture=resnet18", "training.backbone_lr_factor=0",
                 "training.channel_stats=imagenet", "training.embedding_dim=32",
                 "training.transformer_heads=4", "training.feedforward_dim=64",
                 "training.epochs=2", "training.warmup_epochs=1", "training.eval_tiles=8",
                 "training.input_size=256", "training.loader_workers=0",
                 "training.learning_rate=0.001"]


@pytest.fixture(scope="module")
def frozen_study(tiled, tmp_path_factory):
    """A validated copy of the tiled phantom with a local ResNet-18 weights file (random
    weights stand in for ImageNet's: the loading path is the same)."""
    return frozen_copy(tiled, tmp_path_factory.mktemp("features"))


def frozen_copy(tiled, folder):
    """(study.yaml, weights file) of a validated copy of the tiled phantom in ``folder``."""
    study_yaml = validated_copy(tiled, folder / "study")
    weights = folder / "resnet18.pth"
    torch.manual_seed(5)
    torch.save(build_backbone("resnet18", 8).model.state_dict(), weights)
    return study_yaml, weights


def _load(study_yaml, *extra):
    return Study.load(study_yaml, FROZEN + list(extra))


@pytest.fixture(scope="module")
def cached_run(frozen_study):
    """One run trained on cached features: (study, run folder, weights)."""
    from lncr.training.loop import RunSpec
    from lncr.training.trainer import train_run

    study_yaml, weights = frozen_study
    study = _load(study_yaml)
    cfg = study.config
    entries = study_entries(study, "HE", "10x")
    folder = train_run(RunSpec("HE", "10x", "resnet18", 4, 0), entries, cfg.training,
                       cfg.output_dir / "runs", cfg.tiling.tile_size, weights=str(weights),
                       source=study.source,
                       features=FeatureCache(Layout(cfg.output_dir), cfg.embedding))
    return study, folder, weights


def _slides(frozen_study, stain: str, count: int = 2):
    """(study, the first ``count`` slides of ``stain`` at 10x, their feature cache)."""
    study = _load(frozen_study[0])
    entries = study_entries(study, stain, "10x")[:count]
    return study, entries, FeatureCache(Layout(study.config.output_dir))


def _spec(weights, views=1, augment=False, jitter=0.0):
    return feature_spec("resnet18", str(weights), InputGeometry(96, 64),
                        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), views=views,
                        augment=augment, jitter=jitter)


@pytest.mark.slow  # trains a run
class DescribeTrainingOnCachedFeatures:
    def it_records_the_features_and_keeps_only_the_trained_weights(self, cached_run):
        study, folder, _ = cached_run
        config = json.loads((folder / "config.json").read_text())
        assert config["features"]["id"].startswith("resnet18-")
        assert config["features"]["dim"] == 512  # ResNet-18's pooled features
        state = torch.load(folder / "last.pt", weights_only=True)["model"]
        assert not any(k.startswith("encoder.model.") for k in state)  # no backbone saved
        mil = build_mil("resnet18", 32, 2, 4, feedforward_dim=64)
        full = with_backbone_keys(mil, state)  # the head fits the whole model exactly
        assert set(full) == set(mil.state_dict()) - backbone_keys(mil)

    def it_predicts_what_the_end_to_end_frozen_model_predicts(self, cached_run):
        from lncr.training.predict import predict_run

        study, folder, _ = cached_run
        for tiles in ("eval", "all"):
            cached = predict_run(folder, study=study, tiles=tiles, write=False)
            pixels = predict_run(folder, study=study, tiles=tiles, write=False,
                                 features=False)
            assert len(cached) == len(pixels) > 0
            assert np.abs(cached.probability - pixels.probability).max() <= 1e-5

    def it_scores_tiles_from_the_same_features(self, cached_run):
        from lncr.explain.scores import slide_scores
        from lncr.training.predict import load_run

        study, folder, _ = cached_run
        model, config, inputs, _ = load_run(folder, "best")
        entry = study_entries(study, "HE", "10x")[0]
        spec = spec_from_config(config)
        path = FeatureCache(Layout(study.config.output_dir)).path(spec, entry)
        a, pa = slide_scores(model, inputs, entry, config["geometry"]["crop"], 8, path)
        b, pb = slide_scores(model, inputs, entry, config["geometry"]["crop"], 8)
        assert abs(pa - pb) <= 1e-5
        assert np.abs(a.attention - b.attention).max() <= 1e-5
        assert np.abs(a.effect - b.effect).max() <= 1e-5

    def it_trains_reproducibly_and_resumes_to_the_same_weights(self, cached_run, tmp_path):
        from lncr.training.loop import RunSpec
        from lncr.training.trainer import train_run

        study, folder, weights = cached_run
        cfg = study.config
        entries = study_entries(study, "HE", "10x")
        cache = FeatureCache(Layout(cfg.output_dir), cfg.embedding)

        def train(root, stop_after=None):
            return train_run(RunSpec("HE", "10x", "resnet18", 4, 0), entries, cfg.training,
                             root, cfg.tiling.tile_size, weights=str(weights),
                             features=cache, stop_after=stop_after)

        train(tmp_path / "b", stop_after=lambda epoch, step: True)  # stopped after epoch 0
        resumed = train(tmp_path / "b")
        for other in (train(tmp_path / "a"), resumed):
            a = torch.load(folder / "last.pt", weights_only=True)["model"]
            b = torch.load(other / "last.pt", weights_only=True)["model"]
            assert all(torch.equal(a[k], b[k]) for k in a)

    def it_refuses_changed_backbone_weights(self, cached_run, tmp_path):
        from lncr.errors import BadInput

        _, folder, weights = cached_run
        config = json.loads((folder / "config.json").read_text())
        other = tmp_path / "other.pth"
        state = torch.load(weights, weights_only=True)
        state["conv1.weight"] = state["conv1.weight"] + 1
        torch.save(state, other)
        with pytest.raises(BadInput, match="changed"):
            spec_from_config({**config, "weights": str(other)})


class DescribeEmbedding:
    def it_stores_the_centred_crops_features_with_the_tiles_coordinates(self, frozen_study):
        _, entries, cache = _slides(frozen_study, "PAS")
        weights = frozen_study[1]
        spec = _spec(weights)
        assert embed_entries(cache, spec, entries) == entries
        encoder = build_backbone("resnet18", 8, str(weights)).eval()
        inputs = DeviceInput(InputGeometry(96, 64), spec.mean, spec.std, "cpu")
        dataset = BagDataset(entries, 1, train=False, crop=96)
        for slide, entry in enumerate(entries):
            bag = dataset.bag(slide, np.arange(entry.n_tiles), 0)[0]
            with torch.no_grad():
                expected = encoder.features(inputs(bag[None])[0]).numpy()
            with FeatureFile(cache.path(spec, entry)) as f:
                got = f.read(np.arange(entry.n_tiles))
                assert f.views == 1 and f.tiles == entry.n_tiles
            assert np.abs(got - expected).max() <= 1e-5
            with h5py.File(cache.path(spec, entry)) as h5:
                assert len(h5["coords"]) == entry.n_tiles
                assert h5.attrs["patient_id"] == entry.patient_id

    def it_skips_what_is_done_and_redoes_what_changed_or_is_damaged(self, frozen_study):
        _, entries, cache = _slides(frozen_study, "PASM")
        weights = frozen_study[1]
        spec = _spec(weights)
        embed_entries(cache, spec, entries)
        assert embed_entries(cache, spec, entries) == []  # a resume does nothing
        damaged = cache.path(spec, entries[0])
        damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
        assert fingerprint_of(damaged) is None
        assert embed_entries(cache, spec, entries) == [entries[0]]
        other = _spec(weights, views=2, augment=True, jitter=0.1)  # another spec: new files
        assert other.feature_id() != spec.feature_id()
        assert embed_entries(cache, other, entries) == entries

    def it_draws_augmented_views_reproducibly(self, frozen_study):
        study_yaml, weights = frozen_study
        study = _load(study_yaml)
        entry = study_entries(study, "MASSON", "10x")[0]
        spec = _spec(weights, views=3, augment=True, jitter=0.1)
        first, second = (FeatureCache(Layout(study.config.output_dir / name))
                         for name in ("a", "b"))
        for cache in (first, second):
            embed_entries(cache, spec, [entry])
        with FeatureFile(first.path(spec, entry)) as a, FeatureFile(second.path(spec, entry)) as b:
            idx = np.arange(entry.n_tiles)
            views = [a.read(idx, np.full_like(idx, v)) for v in range(3)]
            assert np.array_equal(views[1], b.read(idx, np.ones_like(idx)))  # same seed
            assert not np.allclose(views[0], views[1]) and not np.allclose(views[1], views[2])

    def it_leaves_no_file_when_interrupted(self, tmp_path):
        path = tmp_path / "P1.h5"
        writer = FeatureWriter(path, 1, 10, 4, "float32", {"fingerprint": {}})
        writer.write(0, 0, np.ones((5, 4), np.float32))
        writer.discard()  # what an exception mid-slide does
        assert not path.exists() and not list(tmp_path.iterdir())


def it_gives_training_bags_the_pixel_datasets_tiles(frozen_study):
    study_yaml, weights = frozen_study
    study = _load(study_yaml)
    entries = study_entries(study, "PAS", "10x")[:2]
    cache = FeatureCache(Layout(study.config.output_dir))
    spec = _spec(weights, views=3, augment=True)
    embed_entries(cache, spec, entries)
    features = FeatureBagDataset(entries, [cache.path(spec, e) for e in entries], 6,
                                 train=True, seed=2, views=3)
    pixels = BagDataset(entries, 6, train=True, seed=2, crop=96)
    for key in [(0, 0), (3, 1)]:
        assert np.array_equal(features.indices(key[1], key[0]), pixels.indices(key[1], key[0]))
        bag, _, label, slide = features[key]
        assert bag.shape[0] == 6 and slide == key[1]
        assert float(label) == entries[key[1]].label
    with FeatureFile(cache.path(spec, entries[0])) as f:  # evaluation reads view 0
        evaluation = FeatureBagDataset(entries, [cache.path(spec, e) for e in entries], 1,
                                       train=False, eval_tiles=4)
        idx = evaluation.indices(0)
        assert np.array_equal(evaluation[0][0].numpy(), f.read(idx))


def it_holds_each_features_file_once_for_every_dataset_of_the_process(frozen_study,
                                                                       monkeypatch):
    """The runs of a group read the same slides: one copy in memory, read-only, within the
    process's budget; beyond it, bags are read from the file."""
    from lncr.features import bags

    study_yaml, weights = frozen_study
    study = _load(study_yaml)
    entries = study_entries(study, "PAS", "10x")[:2]
    cache = FeatureCache(Layout(study.config.output_dir))
    spec = _spec(weights)
    embed_entries(cache, spec, entries)
    paths = [cache.path(spec, e) for e in entries]
    monkeypatch.setattr(bags, "LOADED", bags.LoadedFeatures())
    a, b = (FeatureBagDataset(entries, paths, 4, train=True, seed=s) for s in (0, 1))
    a[(0, 0)], b[(0, 0)]
    assert a._arrays[0] is b._arrays[0] and not a._arrays[0].flags.writeable
    assert bags.LOADED.used == a._arrays[0].nbytes
    monkeypatch.setattr(bags, "LOADED", bags.LoadedFeatures(budget=0))
    tight = FeatureBagDataset(entries, paths, 4, train=True, seed=0)
    assert np.array_equal(tight[(0, 0)][0], a[(0, 0)][0]) and not tight._arrays


def it_embeds_from_the_command_line_with_plain_progress_lines(frozen_study):
    study_yaml, weights = frozen_study
    sets = sum((["--set", s] for s in FROZEN + ["sweep.stains=[HE]",
                                                "sweep.magnifications=[10x]",
                                                f"sweep.weights={{resnet18: '{weights}'}}"]),
               [])
    result = CliRunner().invoke(app, ["embed", str(study_yaml), "--device", "cpu",
                                      "--encoder", "resnet18", *sets])
    assert result.exit_code == 0, result.output
    assert "tiles (" in result.output and "/s, ETA" in result.output  # not a terminal
    assert "Features" in result.output
    bad = CliRunner().invoke(app, ["embed", str(study_yaml), "--shard", "3/2", *sets])
    assert bad.exit_code == 2 and "0 ≤ i < N" in bad.output


def it_refuses_a_frozen_grid_with_a_randomly_initialised_backbone(frozen_study):
    from lncr.errors import BadInput
    from lncr.sweep.run import Sweep

    study_yaml, _ = frozen_study
    study = _load(study_yaml, "sweep.backbone=frozen", "sweep.architectures=[resnet18]",
                  "training.pretrained=false")
    with pytest.raises(BadInput, match="resnet18 would start from random weights"):
        Sweep(study).check_frozen()


@pytest.mark.slow  # trains sweep units and final models
def it_selects_on_frozen_features_then_fine_tunes_the_final_models(frozen_study):
    from lncr.sweep.run import run_sweep

    study_yaml, weights = frozen_study
    study = _load(study_yaml, "sweep.backbone=frozen", "sweep.architectures=[resnet18]",
                  "sweep.bag_sizes=[2, 4]", "sweep.repeats=1", "sweep.stains=[HE]",
                  "sweep.magnifications=[10x]", "magnification.powers=[10]",
                  "training.backbone_lr_factor=0.1", "training.epochs=1",
                  f"sweep.weights={{resnet18: '{weights}'}}")
    report = run_sweep(study, executor="local", workers=1, device="cpu")
    out = study.config.output_dir
    assert (report.units.status == "done").all() and len(report.units) == 2
    for folder in report.units.folder:  # the grid: frozen, on cached features
        config = json.loads((resolved(folder, out) / "config.json").read_text())
        assert "runs-frozen" in str(folder) and config["features"] is not None
        assert config["settings"]["backbone_lr_factor"] == 0
    final = report.final.iloc[0]
    config = json.loads((resolved(final.folder, out) / "config.json").read_text())
    assert "final" in str(final.folder) and config["features"] is None  # fine-tuned
    assert config["settings"]["backbone_lr_factor"] == 0.1


@pytest.mark.slow  # starts a local Ray instance
def it_embeds_in_shards_on_ray_as_it_does_locally(frozen_study, tmp_path):
    import shutil

    from lncr.features.study_run import embed_study

    study_yaml, weights = frozen_study
    sets = ["sweep.stains=[MASSON]", "sweep.magnifications=[10x]", "magnification.powers=[10]",
            f"sweep.weights={{resnet18: '{weights}'}}"]
    copy = tmp_path / "study"
    shutil.copytree(study_yaml.parent, copy, ignore=shutil.ignore_patterns("features", "runs"))
    local = embed_study(_load(study_yaml, *sets), ["resnet18"], device="cpu")
    ray = embed_study(_load(copy / "study.yaml", *sets), ["resnet18"], executor="ray",
                      workers=2)
    assert list(ray.embedded) == list(ray.slides) and ray.tiles.sum() == local.tiles.sum()
    mine = sorted((copy / "lncr-output" / "features").rglob("*.h5"))
    theirs = sorted((study_yaml.parent / "lncr-output" / "features").rglob("*.h5"))
    assert len(mine) == int(ray.slides.sum()) > 0
    for a in mine:
        b = study_yaml.parent / a.relative_to(copy)
        assert b in theirs
        with FeatureFile(a) as fa, FeatureFile(b) as fb:
            assert np.abs(fa.load() - fb.load()).max() <= 1e-5
