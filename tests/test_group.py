"""Describe training runs together as one stacked model: each run gets what it gets alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lncr.data.entries import study_entries
from lncr.features.embed import FeatureCache
from lncr.layout import Layout
from lncr.study.validate import Study
from lncr.training.group import train_group
from lncr.training.loop import RunSpec
from lncr.training.trainer import Trainer, train_run
from test_features import FROZEN as FEATURES
from test_features import frozen_copy

FROZEN = FEATURES + ["training.epochs=3"]


@pytest.fixture(scope="module")
def frozen(tiled, tmp_path_factory):
    """(study, weights file, the HE 10x slides) of a validated copy of the tiled phantom."""
    study_yaml, weights = frozen_copy(tiled, tmp_path_factory.mktemp("group"))
    study = Study.load(study_yaml, FROZEN)
    return study, str(weights), study_entries(study, "HE", "10x")


def other_split(entries):
    """The same slides with one training and one validation slide of one label swapped."""
    train = next(e for e in entries if e.split == "train")
    val = next(e for e in entries if e.split == "val" and e.label == train.label)
    swap = {train.patient_id: "val", val.patient_id: "train"}
    return [dataclasses.replace(e, split=swap.get(e.patient_id, e.split)) for e in entries]


def runs(frozen):
    """Four runs of one bag size: two seeds × two splits, and a fifth of another bag size."""
    _, _, entries = frozen
    split1 = other_split(entries)
    return [(RunSpec("HE", "10x", "resnet18", 4, 0), entries),
            (RunSpec("HE", "10x", "resnet18", 4, 1), entries),
            (RunSpec("HE", "10x", "resnet18", 4, 0, "split1"), split1),
            (RunSpec("HE", "10x", "resnet18", 4, 2, "split1"), split1),
            (RunSpec("HE", "10x", "resnet18", 8, 0), entries)]


def trainer(frozen, spec, entries, root, **settings):
    study, weights, _ = frozen
    cfg = study.config
    return Trainer(spec, entries, cfg.training.model_copy(update=settings), root,
                   cfg.tiling.tile_size, weights, features=FeatureCache(
                       Layout(cfg.output_dir), cfg.embedding))


def alone(frozen, spec, entries, root, **settings):
    study, weights, _ = frozen
    cfg = study.config
    return train_run(spec, entries, cfg.training.model_copy(update=settings), root,
                     cfg.tiling.tile_size, weights=weights,
                     features=FeatureCache(Layout(cfg.output_dir), cfg.embedding))


def assert_same_run(a, b, tolerance=1e-5):
    """Metrics, every epoch's validation predictions and the weights agree."""
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    assert list(ma.columns) == list(mb.columns) and len(ma) == len(mb)
    assert np.allclose(ma.to_numpy(float), mb.to_numpy(float), atol=tolerance, equal_nan=True)
    va, vb = pd.read_csv(a / "val_predictions.csv"), pd.read_csv(b / "val_predictions.csv")
    assert (va.patient_id == vb.patient_id).all()
    assert np.abs(va.probability - vb.probability).max() <= tolerance
    for name in ("best.pt", "last.pt"):
        sa = torch.load(a / name, weights_only=True)["model"]
        sb = torch.load(b / name, weights_only=True)["model"]
        assert sa.keys() == sb.keys()
        assert max((sa[k] - sb[k]).abs().max().item() for k in sa) <= tolerance


@pytest.mark.slow  # trains runs
class DescribeGroupTraining:
    def it_gives_each_run_what_it_gets_alone(self, frozen, tmp_path):
        together = [trainer(frozen, s, e, tmp_path / "group") for s, e in runs(frozen)]
        results = train_group(together)
        assert [error for _, error in results] == [None] * 5
        for (spec, entries), (folder, _) in zip(runs(frozen), results):
            assert (folder / "done.json").exists()
            assert_same_run(alone(frozen, spec, entries, tmp_path / "alone"), folder)

    def it_stops_runs_at_their_own_epoch_and_resumes_them(self, frozen, tmp_path):
        """Successive halving's rung: two runs stop after epoch 0 mid-group, the others go
        on; the stopped ones, resumed in a group of their own, finish as alone."""
        chosen = runs(frozen)[:4]

        def stop(index: int, epoch: int, step: int | None) -> bool:
            return index in (1, 3) and step is None and epoch == 0

        first = train_group([trainer(frozen, s, e, tmp_path / "g") for s, e in chosen], stop)
        assert [(f / "done.json").exists() for f, _ in first] == [True, False, True, False]
        assert len(pd.read_csv(first[1][0] / "metrics.csv")) == 1
        train_group([trainer(frozen, s, e, tmp_path / "g") for s, e in chosen])
        for spec, entries in chosen:
            assert_same_run(alone(frozen, spec, entries, tmp_path / "alone"),
                            spec.folder(tmp_path / "g"))

    def it_resumes_a_group_cut_mid_epoch_to_the_same_results(self, frozen, tmp_path):
        chosen = runs(frozen)[:3]
        every = {"checkpoint_every": 2}
        cut = train_group([trainer(frozen, s, e, tmp_path / "g", **every) for s, e in chosen],
                          lambda index, epoch, step: epoch == 1 and step == 2)
        assert all(error is None and not (f / "done.json").exists() for f, error in cut)
        assert torch.load(cut[0][0] / "last.pt", weights_only=False)["step"] == 2
        train_group([trainer(frozen, s, e, tmp_path / "g", **every) for s, e in chosen])
        for spec, entries in chosen:
            assert_same_run(alone(frozen, spec, entries, tmp_path / "alone", **every),
                            spec.folder(tmp_path / "g"))

    def it_splits_a_group_that_does_not_fit_and_gets_the_same_results(self, frozen, tmp_path,
                                                                     monkeypatch):
        from lncr.training import group_memory
        from lncr.training.group import GroupTrainer

        monkeypatch.setattr(group_memory, "run_bytes", lambda *args: 1000)
        monkeypatch.setattr(group_memory, "free_bytes", lambda device: 4000)  # 2 runs fit
        chosen = runs(frozen)[:4]
        split = GroupTrainer([trainer(frozen, s, e, tmp_path / "g") for s, e in chosen])
        assert [m.error for m in split.run()] == [None] * 4 and split.chunk_size == 2
        for spec, entries in chosen:
            assert_same_run(alone(frozen, spec, entries, tmp_path / "alone"),
                            spec.folder(tmp_path / "g"))

    def it_fails_the_runs_of_a_step_that_fails_and_finishes_the_others(self, frozen, tmp_path,
                                                                        monkeypatch):
        """A step that raises (a features file damaged mid-run) fails the runs stepping
        together in it, with the error; a run of another bag size finishes as alone."""
        from lncr.training.group import GroupTrainer

        original = GroupTrainer._step

        def step(self, members, *args):
            if members[0].trainer.settings.bag_size == 4:
                raise OSError("features file damaged")
            return original(self, members, *args)

        monkeypatch.setattr(GroupTrainer, "_step", step)
        chosen = [runs(frozen)[0], runs(frozen)[4]]  # bag 4, bag 8
        results = train_group([trainer(frozen, s, e, tmp_path / "g") for s, e in chosen])
        assert isinstance(results[0][1], OSError) and results[1][1] is None
        assert not (results[0][0] / "done.json").exists()
        assert_same_run(alone(frozen, *chosen[1], tmp_path / "alone"), results[1][0])


@pytest.mark.slow  # trains three sweeps, one on a local Ray instance
def it_selects_in_groups_what_it_selects_one_unit_at_a_time(frozen, tmp_path):
    """A frozen grid with re-drawn splits and successive halving, swept one unit at a time
    and with groups (automatic) on the local pool and on Ray: the same figures for every unit,
    the same choice."""
    import shutil

    from lncr.sweep.run import run_sweep

    study, weights, _ = frozen
    folder = study.source["study"]
    reports = {}
    for size, executor in ((1, "local"), (0, "local"), (0, "ray")):
        copy = tmp_path / f"size{size}-{executor}"
        shutil.copytree(Path(folder).parent, copy, ignore=shutil.ignore_patterns("runs*"))
        sets = FROZEN + ["sweep.backbone=frozen", "sweep.architectures=[resnet18]",
                         "sweep.bag_sizes=[2, 4]", "sweep.repeats=3", "sweep.resplit=true",
                         "sweep.stains=[HE]", "sweep.magnifications=[10x]",
                         "magnification.powers=[10]", "sweep.early_stopping=halving",
                         "sweep.halving_rate=2", "sweep.min_epochs=2", "training.epochs=4",
                         f"sweep.weights={{resnet18: '{weights}'}}", f"sweep.group_size={size}"]
        reports[size, executor] = run_sweep(Study.load(copy / "study.yaml", sets),
                                            executor=executor, workers=1, device="cpu",
                                            final=False)
    tables = {k: r.units.sort_values(["bag_size", "repeat"]).reset_index(drop=True)
              for k, r in reports.items()}
    a = tables[1, "local"]
    assert set(a.group) == {1} and "stopped" in set(a.status)
    for key in ((0, "local"), (0, "ray")):  # 3 repeats of each bag size together
        b = tables[key]
        assert list(a.status) == list(b.status) and set(b.group) == {3}
        for column in ("epochs_trained", "val_auc", "val_loss", "train_loss", "best_val_auc"):
            assert np.allclose(a[column], b[column], atol=1e-5, equal_nan=True), column
    chosen = {k: {f: r.selection[f] for f in ("architectures", "bag_size", "decided_by")}
              for k, r in reports.items()}
    assert chosen[1, "local"] == chosen[0, "local"] == chosen[0, "ray"]


class DescribeGrouping:
    @staticmethod
    def tasks(frozen: bool = True, stop: int = 10):
        from lncr.sweep.grid import Unit
        from lncr.sweep.unit import UnitTask

        units = [Unit.of(stain, "10x", "resnet18", bag, r, r, f"split{r}" if r else "")
                 for stain in ("HE", "PAS") for bag in (8, 16) for r in range(5)]
        return [UnitTask(u, None, "runs", 10, stop, "cpu", 1, "w.pth", frozen) for u in units]

    def it_groups_the_units_of_an_architecture_and_bag_size(self):
        from lncr.sweep.groups import group_tasks
        from lncr.sweep.unit import GroupTask

        groups = group_tasks(self.tasks(), 0, workers=2)  # 20 units, 2 workers: up to 10
        assert all(isinstance(g, GroupTask) for g in groups) and len(groups) == 2
        for g in groups:  # both stains' 5 repeats of one bag size
            assert len({u.bag_size for u in g.units}) == 1 and len(g.units) == 10
            assert {u.stain for u in g.units} == {"HE", "PAS"}

    def it_caps_groups_evenly_and_keeps_one_unit_alone(self):
        from lncr.sweep.groups import group_tasks
        from lncr.sweep.unit import GroupTask, UnitTask, task_units

        sizes = sorted(len(task_units(g)) for g in group_tasks(self.tasks(), 3, workers=2))
        assert sizes == [2, 2, 2, 2, 3, 3, 3, 3]  # 10 units a bag size, at most 3: 3+3+2+2
        lone = group_tasks(self.tasks()[:1] + self.tasks()[5:6], 0, workers=1)
        assert all(isinstance(t, UnitTask) for t in lone)  # two bag sizes: no group
        assert not any(isinstance(t, GroupTask) for t in group_tasks(self.tasks(), 1, 2))

    def it_leaves_fine_tuned_units_alone(self):
        from lncr.sweep.groups import group_tasks

        tasks = self.tasks(frozen=False)
        assert group_tasks(tasks, 0, workers=1) == tasks

    def it_paces_the_progress_by_whole_groups(self, tmp_path, monkeypatch):
        """The rows of a group arrive together: the pace counts the group as finished, so the
        first row of a group does not promise hours."""
        import lncr.sweep.run as sweep_run
        from lncr.sweep.groups import group_tasks
        from lncr.sweep.run import _Book, _run_units
        from lncr.sweep.unit import result_row, task_units

        tasks = self.tasks()[:8]  # bag 8: 5 units, bag 16: 3 units
        clock = [0.0]
        monkeypatch.setattr(sweep_run.time, "perf_counter", lambda: clock[0])

        class TenSecondsAGroup:
            def map(self, tasks):
                for task in tasks:
                    clock[0] += 10.0
                    for u in task_units(task):
                        yield {**result_row(u, u.spec.folder(tmp_path), "done"),
                               "group": len(task_units(task))}

        seen = []
        book = _Book(tmp_path / "units.csv", [t.unit for t in tasks], tmp_path)
        _run_units([t.unit for t in tasks], lambda u, stop: next(
            t for t in tasks if t.unit == u), 10, book, TenSecondsAGroup, seen.append,
            lambda ts: group_tasks(ts, 4, 1))
        assert [r["group"] for r in seen] == [3, 3, 3, 2, 2, 3, 3, 3]
        # after the first group: 3 units in 10 s, 5 to go
        assert [round(r["eta_s"], 2) for r in seen[:3]] == [round(50 / 3, 2)] * 3
        assert seen[-1]["eta_s"] == 0
