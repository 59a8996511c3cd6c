"""Describe a training run: its folder, its metrics, and resuming to the same weights."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiled_entries
from lncr.study.config import TrainingSettings
from lncr.training.loop import RunSpec, lr_lambda
from lncr.training.metrics import auc, youden_threshold
from lncr.training.trainer import train_run

SMALL = TrainingSettings(pretrained=False, embedding_dim=32, transformer_heads=4, epochs=3,
                         warmup_epochs=1, eval_tiles=4, learning_rate=1e-3, feedforward_dim=64,
                         input_size=256, loader_workers=0)


@pytest.fixture
def entries(tiled):
    return tiled_entries(tiled, "PAS", "10x")


def weights_of(folder):
    return torch.load(folder / "last.pt", weights_only=True)["model"]


class DescribeTrainRun:
    @pytest.mark.slow  # trains and resumes runs
    def it_writes_a_complete_run_folder(self, entries, tmp_path):
        spec = RunSpec("PAS", "10x", "resnet18", 4, 0)
        folder = train_run(spec, entries, SMALL, tmp_path, tile_size=128)
        assert folder == tmp_path / "PAS" / "10x" / "resnet18-b4-s0"
        for name in ("config.json", "split.csv", "metrics.csv", "last.pt", "best.pt", "done.json"):
            assert (folder / name).exists(), name
        metrics = pd.read_csv(folder / "metrics.csv")
        assert list(metrics.epoch) == [0, 1, 2]
        assert {"train_loss", "train_auc", "val_loss", "val_auc", "val_accuracy", "threshold"} \
            <= set(metrics.columns)
        assert list((folder / "tb").glob("events.out.tfevents.*"))
        split = pd.read_csv(folder / "split.csv")
        assert set(split.split) == {"train", "val"}  # external slides never enter training
        final = torch.load(folder / "last.pt", weights_only=True)
        assert set(final) == {"model", "epoch", "step", "complete"} and final["epoch"] == 3

    @pytest.mark.slow  # trains and resumes runs
    def it_resumes_to_exactly_the_weights_of_an_uninterrupted_run(self, entries, tmp_path):
        spec = RunSpec("PAS", "10x", "resnet18", 4, 1)
        straight = train_run(spec, entries, SMALL, tmp_path / "a", tile_size=128)
        stopped = train_run(spec, entries, SMALL, tmp_path / "b", tile_size=128,
                            stop_after=lambda epoch, step: epoch == 0 and step is None)
        assert not (stopped / "done.json").exists()
        resumed = train_run(spec, entries, SMALL, tmp_path / "b", tile_size=128)
        a, b = weights_of(straight), weights_of(resumed)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        pd.testing.assert_frame_equal(pd.read_csv(straight / "metrics.csv"),
                                      pd.read_csv(resumed / "metrics.csv"))

    @pytest.mark.slow  # trains and resumes runs
    def it_resumes_mid_epoch_with_workers_to_the_same_weights(self, entries, tmp_path):
        spec = RunSpec("PAS", "10x", "resnet18", 4, 3)
        every = SMALL.model_copy(update={"checkpoint_every": 1, "epochs": 2})
        straight = train_run(spec, entries, every, tmp_path / "a", tile_size=128)
        stopped = train_run(spec, entries, every.model_copy(update={"loader_workers": 2}),
                            tmp_path / "b", tile_size=128,
                            stop_after=lambda epoch, step: epoch == 1 and step == 1)
        state = torch.load(stopped / "last.pt", weights_only=True)
        assert (state["epoch"], state["step"]) == (1, 1) and len(state["outputs"]) == 1
        resumed = train_run(spec, entries, every, tmp_path / "b", tile_size=128)
        a, b = weights_of(straight), weights_of(resumed)
        assert all(torch.equal(a[k], b[k]) for k in a)
        pd.testing.assert_frame_equal(pd.read_csv(straight / "metrics.csv"),
                                      pd.read_csv(resumed / "metrics.csv"))

    def it_refuses_to_resume_with_other_settings(self, entries, tmp_path):
        spec = RunSpec("PAS", "10x", "resnet18", 4, 4)
        train_run(spec, entries, SMALL, tmp_path, 128, stop_after=lambda e, s: True)
        with pytest.raises(ValueError, match="other settings"):
            train_run(spec, entries, SMALL.model_copy(update={"learning_rate": 0.1}), tmp_path, 128)

    def it_uses_the_published_channel_statistics_when_asked(self, entries, tmp_path):
        spec = RunSpec("PAS", "10x", "resnet18", 4, 5)
        settings = SMALL.model_copy(update={"epochs": 1, "channel_stats": "published"})
        folder = train_run(spec, entries, settings, tmp_path, 128)
        config = json.loads((folder / "config.json").read_text())
        assert config["channel_mean"] == [0.8474, 0.7170, 0.8241]
        assert config["geometry"] == {"crop": 96, "size": 64}
        assert config["precision"] == "fp32" and config["versions"]["torch"] == torch.__version__

    def it_steps_on_several_bags_with_batch_statistics(self, entries, tmp_path):
        spec = RunSpec("PAS", "10x", "resnet18", 4, 6)
        settings = SMALL.model_copy(update={"epochs": 1, "bags_per_step": 2,
                                            "batch_norm": "train"})
        folder = train_run(spec, entries, settings, tmp_path, 128)
        metrics = pd.read_csv(folder / "metrics.csv")
        n_train = sum(e.split == "train" for e in entries)
        assert metrics.bags.iloc[0] == metrics.slides_seen.iloc[0] == n_train
        bn = {k: v for k, v in weights_of(folder).items() if k.endswith("bn1.running_mean")}
        assert any(v.abs().sum() > 0 for v in bn.values())  # batch statistics were tracked

    def it_stops_unfinished_with_a_clear_error_when_the_loss_diverges(self, entries, tmp_path):
        from lncr.training.loop import TrainingDiverged

        wild = SMALL.model_copy(update={"learning_rate": 1e30, "warmup_epochs": 0})
        with pytest.raises(TrainingDiverged, match="learning_rate"):
            train_run(RunSpec("PAS", "10x", "resnet18", 4, 0), entries, wild, tmp_path,
                      tile_size=128)
        folder = tmp_path / "PAS" / "10x" / "resnet18-b4-s0"
        assert not (folder / "done.json").exists()
        assert not pd.read_csv(folder / "metrics.csv").train_loss.map(
            lambda v: v == v and abs(v) != float("inf")).iloc[-1]  # the diverged epoch is kept

    def it_skips_a_finished_run(self, entries, tmp_path):
        spec = RunSpec("PAS", "10x", "resnet18", 4, 2)
        folder = train_run(spec, entries, SMALL.model_copy(update={"epochs": 1}), tmp_path, 128)
        stamp = (folder / "last.pt").stat().st_mtime_ns
        train_run(spec, entries, SMALL.model_copy(update={"epochs": 1}), tmp_path, 128)
        assert (folder / "last.pt").stat().st_mtime_ns == stamp


class DescribeSchedule:
    def it_warms_up_then_anneals_to_the_floor(self):
        s = TrainingSettings(epochs=10, warmup_epochs=2, learning_rate=1e-2, min_learning_rate=1e-4)
        f = lr_lambda(s)
        assert f(0) == 0.5 and f(1) == 1.0 and f(2) == pytest.approx(1.0)
        assert f(10) == pytest.approx(1e-2) and f(6) < f(3)


class DescribeMetrics:
    def it_computes_auc_with_ties(self):
        assert auc([0, 1], [0.5, 0.5]) == 0.5
        assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0

    def it_finds_the_youden_threshold(self):
        assert youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9]) == 0.6

    def it_breaks_youden_ties_as_the_authors_do(self):
        # J = 0.5 at 0.4 and at 0.8: the authors' loop keeps the first, highest, threshold
        assert youden_threshold([0, 1, 0, 1], [0.2, 0.4, 0.6, 0.8]) == 0.8
        # no threshold with J > 0: 0, every patient positive
        assert youden_threshold([1, 0, 1, 0], [0.2, 0.4, 0.6, 0.8]) == 0.0

    def it_matches_the_authors_threshold_search_on_sklearns_roc(self):
        from sklearn.metrics import roc_curve

        rng = np.random.default_rng(0)
        for _ in range(200):
            labels = rng.integers(0, 2, 12)
            if len(set(labels)) < 2:
                continue
            scores = rng.integers(0, 6, 12) / 5  # many ties
            fpr, tpr, thresholds = roc_curve(labels, scores)
            m = t = 0  # ModelTrain.py get_cm_train, line for line
            for i in range(len(thresholds)):
                if tpr[i] - fpr[i] > m:
                    m, t = abs(-fpr[i] + tpr[i]), thresholds[i]
            assert youden_threshold(labels, scores) == t


class DescribeTrainCommand:
    def it_trains_from_the_command_line(self, tiled, tmp_path):
        import shutil

        from typer.testing import CliRunner

        from conftest import FAST
        from lncr.cli import app

        study = tmp_path / "p"
        shutil.copytree(tiled, study)
        runner = CliRunner()
        assert runner.invoke(app, ["validate", str(study / "study.yaml"), "--no-files"]).exit_code == 0
        sets = FAST + ["training.epochs=2", "training.warmup_epochs=1", "training.embedding_dim=32",
                       "training.transformer_heads=4", "training.eval_tiles=4"]
        args = ["train", str(study / "study.yaml"), "--stain", "HE", "--magnification", "10x",
                "--architecture", "resnet18", "--bag-size", "4", "--no-pretrained"]
        result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
        assert result.exit_code == 0, result.output
        assert "validation AUC" in result.output
        # one plain line per epoch (CliRunner is not a terminal): counts, metrics, time, ETA
        assert re.search(r"epoch 1/2: train loss \d\.\d+, .*validation AUC .*lr .* s, ETA 0:\d\d\)",
                         result.output), result.output
        assert "epoch 2/2: " in result.output
        assert (study / "lncr-output" / "runs" / "HE" / "10x" / "resnet18-b4-s0" / "done.json").exists()

    def it_asks_for_the_earlier_stages_first(self, make_study):
        from typer.testing import CliRunner

        from lncr.cli import app

        result = CliRunner().invoke(app, ["train", str(make_study()), "--stain", "HE",
                                          "--magnification", "20x", "--no-pretrained"])
        assert result.exit_code == 2 and "lncr validate" in result.output
