"""Describe the command line's one error boundary: every command answers a user's mistake with
one red line naming the problem and exit code 2, never a traceback; `--debug` lets the
traceback through."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lncr.cli import app
from lncr.errors import BadInput, LncrError, WorkFailed

#: Every command that takes a study, with the options it needs besides the study.
COMMANDS = {
    "validate": ["validate", "{study}", "--no-files"],
    "tile": ["tile", "{study}"],
    "train": ["train", "{study}", "--stain", "HE", "--magnification", "10x", "--device", "cpu"],
    "predict": ["predict", "{study}", "--device", "cpu"],
    "sweep": ["sweep", "{study}", "--device", "cpu"],
    "evaluate": ["evaluate", "{study}"],
    "explain heatmap": ["explain", "heatmap", "{study}", "--device", "cpu"],
    "explain gradcam": ["explain", "gradcam", "{study}", "--device", "cpu"],
    "explain cluster": ["explain", "cluster", "{study}", "--device", "cpu"],
    "report": ["report", "{study}"],
    "tiles export": ["tiles", "export", "{study}", "{out}"],
}


def run(command: str, study, tmp_path, *extra: str):
    args = [a.format(study=study, out=tmp_path / "export") for a in COMMANDS[command]]
    return CliRunner().invoke(app, args + list(extra))


def one_clear_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    assert "ERROR" in result.output or "error" in result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
class DescribeEveryCommand:
    def it_names_a_mistyped_setting_and_the_closest_key(self, command, make_study, tmp_path):
        study = make_study()
        out = one_clear_line(run(command, study, tmp_path, "--set", "training.epochz=3"))
        assert "training.epochz" in out and "did you mean 'training.epochs'" in out

    def it_names_a_missing_study_file(self, command, tmp_path):
        out = one_clear_line(run(command, tmp_path / "nowhere.yaml", tmp_path))
        assert "nowhere.yaml" in out and "not found" in out

    def it_refuses_a_study_with_errors(self, command, make_study, tmp_path):
        study = make_study(patients=[("P1", "development", "1"), ("P2", "development", "7"),
                                     ("E1", "external", "0")])
        one_clear_line(run(command, study, tmp_path))


class DescribeDebug:
    def it_lets_the_traceback_through(self, tmp_path):
        from lncr.study.validate import StudyHasErrors

        result = CliRunner().invoke(app, ["--debug", "evaluate", str(tmp_path / "none.yaml")])
        assert isinstance(result.exception, StudyHasErrors)
        assert "none.yaml" in str(result.exception) and "file not found" in str(result.exception)


    def it_names_a_command_line_that_works_in_the_internal_error_hint(self, make_study,
                                                                     monkeypatch):
        import shlex

        import lncr.evaluation.evaluate as evaluation

        def broken(*args, **kwargs):
            raise KeyError("boom")

        monkeypatch.setattr(evaluation, "evaluate_study", broken)
        study = str(make_study())
        result = CliRunner().invoke(app, ["evaluate", study, "--no-figures", "--debug"][:3])
        assert result.exit_code == 1 and "internal error (KeyError" in result.output
        hint = result.output.split("run `")[1].split("`")[0]
        assert hint == shlex.join(["lncr", "--debug", "evaluate", study, "--no-figures"])
        again = CliRunner().invoke(app, shlex.split(hint)[1:])  # as the hint says
        assert isinstance(again.exception, KeyError)


class DescribeLogs:
    def it_never_wraps_a_table_written_to_a_file_or_pipe(self):
        import io

        from lncr.cli.common import LogConsole, table

        out = io.StringIO()
        cells = [f"validation-cohort-{i}" for i in range(12)]
        LogConsole(file=out, highlight=False, soft_wrap=True).print(
            table("A wide table", [f"column-{i}" for i in range(12)], [cells, cells]))
        lines = out.getvalue().splitlines()
        assert len(lines) == 7  # title, top rule, header, rule, two rows, bottom: no fold
        assert all(c in lines[4] for c in cells) and len(lines[4]) > 240

    def it_keeps_the_terminals_width_on_a_terminal(self):
        import io

        from lncr.cli.common import LogConsole

        terminal = LogConsole(file=io.StringIO(), force_terminal=True, width=100)
        assert terminal.width == 100


class DescribeErrorKinds:
    def it_gives_bad_input_exit_2_and_failed_work_exit_1(self):
        from lncr.cli.common import describe_error

        assert describe_error(BadInput("x"))[0] == 2 and describe_error(WorkFailed("y"))[0] == 1
        assert describe_error(FileNotFoundError(2, "No such file", "a.csv")) == (
            2, "No such file: a.csv (check the path)")
        assert describe_error(OSError(28, "No space left on device", "/out/x"))[0] == 1
        code, message = describe_error(KeyError("boom"))
        assert code == 1 and "--debug" in message

    def it_keeps_the_builtin_bases_callers_catch(self):
        from lncr.models.backbones import WeightsUnavailable
        from lncr.study.config import StudyConfigError
        from lncr.training.loop import TrainingDiverged

        assert issubclass(StudyConfigError, ValueError) and issubclass(StudyConfigError, LncrError)
        assert issubclass(WeightsUnavailable, RuntimeError)
        assert issubclass(TrainingDiverged, RuntimeError)
