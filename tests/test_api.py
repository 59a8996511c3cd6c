"""Describe the Python API's spine: a Study built once (from a file or in code) is what every
stage takes, and the sweep runs on any object with the Executor protocol."""

from __future__ import annotations

import dataclasses

import pytest

from lncr.study.config import StudyConfig
from lncr.study.validate import Study, StudyHasErrors


class DescribeStudy:
    def it_loads_a_file_once_with_its_overrides_and_records_them(self, make_study):
        study = Study.load(make_study(), ["training.epochs=3"])
        assert study.config.training.epochs == 3 and study.split is not None
        assert study.source["overrides"] == ["training.epochs=3"]
        assert study.source["study"].endswith("study.yaml")

    def it_is_frozen(self, make_study):
        study = Study.load(make_study())
        with pytest.raises(dataclasses.FrozenInstanceError):
            study.config = None

    def it_is_built_from_settings_made_in_code(self, make_study):
        folder = make_study().parent
        config = StudyConfig(patients=folder / "patients.csv", slides=folder / "slides.csv",
                             output_dir=folder / "out", stains=("HE", "PAS"))
        study = Study.from_config(config)
        assert len(study.patients) and study.source["study"] is None
        assert study.config.output_dir == folder / "out"

    def it_refuses_settings_whose_tables_have_errors(self, make_study):
        folder = make_study([("P1", "development", "1"), ("P2", "development", "7")]).parent
        config = StudyConfig(patients=folder / "patients.csv", slides=folder / "slides.csv",
                             output_dir=folder / "out", stains=("HE", "PAS"))
        with pytest.raises(StudyHasErrors, match="label '7'"):
            Study.from_config(config)


class DescribeExecutorProtocol:
    def it_is_what_the_registered_executors_implement(self):
        from lncr.sweep.executors import Executor, LocalExecutor

        assert isinstance(LocalExecutor(workers=1, device="cpu"), Executor)

    def it_lets_the_sweep_run_on_an_object_it_does_not_own(self, make_study):
        from lncr.sweep.run import Sweep

        class Recorder:
            name = "recorder"
            closed = False

            def map(self, tasks):
                return iter(())

            def close(self):
                self.closed = True

        executor = Recorder()
        sweep = Sweep(Study.load(make_study()), executor=executor)
        assert sweep.executor() is executor and sweep.kind == "recorder"
        assert not sweep._owns_executor  # the caller's object is not closed by the sweep

    def it_refuses_an_unknown_executor_name_before_any_work(self, make_study):
        from lncr.errors import BadInput
        from lncr.sweep.run import Sweep

        with pytest.raises(BadInput, match="slurm"):
            Sweep(Study.load(make_study()), executor="slurm")
