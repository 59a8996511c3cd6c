"""Describe training and prediction from the command line: several processes (torchrun on
gloo), `lncr predict`, and the weights options."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST, validated_copy
from lncr.cli import app
from lncr.training.metrics import auc

#: A small, quick model on the FAST tiles (128 px).
QUICK = FAST + ["training.epochs=2", "training.warmup_epochs=1", "training.embedding_dim=32",
                "training.transformer_heads=4", "training.feedforward_dim=64",
                "training.eval_tiles=4", "training.input_size=256", "training.loader_workers=0"]


def sets(values: list[str]) -> list[str]:
    return [a for s in values for a in ("--set", s)]


@pytest.fixture
def study(tiled, tmp_path):
    """A validated copy of the tiled phantom."""
    return validated_copy(tiled, tmp_path / "p")


def train_args(study, *extra: str) -> list[str]:
    return ["train", str(study), "--stain", "PAS", "--magnification", "10x", "--architecture",
            "resnet18", "--bag-size", "4", "--no-pretrained", "--device", "cpu", *extra]


@pytest.mark.slow  # torchrun
class DescribeSeveralProcesses:
    def it_trains_on_disjoint_shares_and_logs_what_one_process_re_evaluates(self, study):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "lncr", *train_args(study, *sets(QUICK))]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        folder = study.parent / "lncr-output" / "runs" / "PAS" / "10x" / "resnet18-b4-s0"
        config = pd.read_json(folder / "config.json", typ="series")
        assert config["world_size"] == 2
        metrics = pd.read_csv(folder / "metrics.csv")
        n_train = int((pd.read_csv(folder / "split.csv").split == "train").sum())
        # every training slide once per epoch, across both ranks
        assert (metrics.slides_seen == n_train).all() and (metrics.bags == n_train).all()
        # the validation metrics rank 0 logged == one process re-evaluating the final weights
        rows = CliRunner().invoke(app, ["predict", str(folder), "--cohort", "development",
                                        "--checkpoint", "last", "--device", "cpu"])
        assert rows.exit_code == 0, rows.output
        pred = pd.read_csv(folder / "predictions" / "development-last-eval.csv")
        val = pred[pred.split == "val"]
        p = val.probability.to_numpy()
        loss = -np.mean(np.where(val.label == 1, np.log(p), np.log(1 - p)))
        assert auc(val.label, p) == metrics.val_auc.iloc[-1]
        assert loss == pytest.approx(metrics.val_loss.iloc[-1], rel=1e-4)


@pytest.fixture(scope="module")
def run(tiled, tmp_path_factory):
    """One trained run shared by the prediction tests (they only add predictions)."""
    study = validated_copy(tiled, tmp_path_factory.mktemp("predict") / "p")
    result = CliRunner().invoke(app, train_args(study, *sets(QUICK)))
    assert result.exit_code == 0, result.output
    return study.parent / "lncr-output" / "runs" / "PAS" / "10x" / "resnet18-b4-s0"


class DescribePredictCommand:
    def it_writes_one_row_per_slide_of_the_cohort(self, run):
        result = CliRunner().invoke(app, ["predict", str(run), "--cohort", "external",
                                          "--device", "cpu"])
        assert result.exit_code == 0, result.output
        rows = pd.read_csv(run / "predictions" / "external-last-eval.csv", dtype={"patient_id": str})
        assert rows.patient_id.tolist() == ["EXT-001", "EXT-002"]
        assert {"patient_id", "stain", "magnification", "run", "probability", "label",
                "tiles_used"} <= set(rows.columns)
        assert (rows.stain == "PAS").all() and rows.probability.between(0, 1).all()
        assert (rows.tiles_used <= 4).all() and (run / "predictions" / "external-last-eval.json").exists()

    def it_uses_every_tile_in_chunks_deterministically(self, run):
        from lncr.training.predict import predict_run

        a = predict_run(run, "all", tiles="all", chunk_size=3, write=False)
        b = predict_run(run, "all", tiles="all", chunk_size=3, write=False)
        index = pd.read_csv(run.parents[3] / "tiles" / "index.csv", dtype={"patient_id": str})
        kept = index[(index.stain == "PAS") & (index.magnification == "10x")].set_index("patient_id").kept
        assert (a.tiles_used.to_numpy() == kept.loc[a.patient_id].to_numpy()).all()
        assert (a.chunks == np.ceil(a.tiles_used / 3)).all() and (a.chunks > 1).any()
        pd.testing.assert_frame_equal(a, b)
        assert set(a.cohort) == {"development", "external"}

    def it_names_an_unknown_cohort_or_tile_choice(self, run):
        bad_cohort = CliRunner().invoke(app, ["predict", str(run), "--cohort", "test"])
        assert bad_cohort.exit_code == 2 and "development, train, val, external, prospective, outside, all" in bad_cohort.output
        bad_tiles = CliRunner().invoke(app, ["predict", str(run), "--tiles", "some"])
        assert bad_tiles.exit_code == 2 and "use eval or all" in bad_tiles.output
        bad_checkpoint = CliRunner().invoke(app, ["predict", str(run), "--checkpoint", "config"])
        assert bad_checkpoint.exit_code == 2 and "use best or last" in bad_checkpoint.output

    def it_refuses_run_folder_options_with_a_study(self, tmp_path):
        result = CliRunner().invoke(app, ["predict", str(tmp_path / "study.yaml"), "--cohort",
                                          "external",
                                          "--checkpoint", "best"])
        assert result.exit_code == 2 and "--cohort, --checkpoint apply to a run folder only" \
            in " ".join(result.output.split())

    def it_explains_a_folder_that_is_not_a_run(self, tmp_path):
        result = CliRunner().invoke(app, ["predict", str(tmp_path)])
        assert result.exit_code == 2 and "not a run folder" in result.output


class DescribeWeightsOptions:
    def it_explains_how_to_train_offline(self, study, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))

        def offline(*args, **kwargs):
            raise OSError("network is unreachable")

        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
        args = [a for a in train_args(study, *sets(QUICK)) if a != "--no-pretrained"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "--weights PATH" in result.output

    def it_trains_from_a_local_weights_file(self, study, tmp_path):
        import torchvision

        path = tmp_path / "resnet18.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
        args = [a for a in train_args(study, *sets(QUICK), "--weights", str(path))
                if a != "--no-pretrained"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        run = study.parent / "lncr-output" / "runs" / "PAS" / "10x" / "resnet18-b4-s0"
        assert pd.read_json(run / "config.json", typ="series")["weights"] == str(path)

    def it_names_a_missing_weights_file(self, study, tmp_path):
        result = CliRunner().invoke(app, train_args(study, "--weights", str(tmp_path / "no.pth")))
        assert result.exit_code == 2 and "no such file" in result.output
