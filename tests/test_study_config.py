"""Describe study.yaml: defaults, strict keys with suggestions, overrides, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from lncr.study.config import StudyConfigError
from lncr.study.config_file import load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


class DescribeLoadConfig:
    def it_accepts_a_study_with_only_the_two_tables(self, tmp_path):
        cfg = load_config(write(tmp_path, "patients: p.csv\nslides: s.csv\n"))
        assert cfg.stains == ("HE", "PAS", "PASM", "MASSON")
        assert cfg.magnification.powers == (10.0, 20.0, 40.0)
        assert cfg.tiling.tile_size == 512
        assert cfg.tiling.background_threshold == 225
        assert cfg.tiling.max_background_fraction == 0.5
        assert cfg.training.bag_size == 16 and cfg.training.epochs == 100
        assert cfg.sweep.bag_sizes == (8, 16, 32, 64) and cfg.sweep.repeats == 10
        assert cfg.ensemble.within_stain == "mean" and cfg.ensemble.across_stains == "max"

    def it_resolves_paths_relative_to_the_yaml(self, tmp_path):
        (tmp_path / "sub").mkdir()
        cfg = load_config(write(tmp_path / "sub", "patients: ../p.csv\nslides: s.csv\n"))
        assert cfg.patients == (tmp_path / "p.csv").resolve()
        assert cfg.slides == (tmp_path / "sub" / "s.csv").resolve()
        assert cfg.output_dir == (tmp_path / "sub" / "lncr-output").resolve()

    def it_maps_objective_powers_to_physical_resolution(self, tmp_path):
        cfg = load_config(write(tmp_path, "patients: p.csv\nslides: s.csv\n"))
        assert [cfg.magnification.mpp(p) for p in (10, 20, 40)] == [1.0, 0.5, 0.25]

    def it_names_an_unknown_key_its_line_and_the_closest_valid_one(self, tmp_path):
        path = write(tmp_path, "patients: p.csv\nslides: s.csv\ntiling:\n  tile_sise: 256\n")
        with pytest.raises(StudyConfigError) as err:
            load_config(path)
        (problem,) = err.value.problems
        assert "tiling.tile_sise" in problem and "tiling.tile_size" in problem
        assert "line 4" in problem

    def it_suggests_a_top_level_key(self, tmp_path):
        path = write(tmp_path, "patients: p.csv\nslides: s.csv\nstain: [HE]\n")
        with pytest.raises(StudyConfigError, match="did you mean 'stains'"):
            load_config(path)

    def it_reports_every_problem_at_once(self, tmp_path):
        path = write(tmp_path, "slides: s.csv\ntiling:\n  tile_size: -5\nsplit:\n  val_fraction: 2\n")
        with pytest.raises(StudyConfigError) as err:
            load_config(path)
        text = "\n".join(err.value.problems)
        assert "'patients' is required" in text
        assert "tiling.tile_size" in text and "split.val_fraction" in text
        assert len(err.value.problems) == 3

    def it_rejects_yaml_that_is_not_a_mapping(self, tmp_path):
        with pytest.raises(StudyConfigError, match="mapping"):
            load_config(write(tmp_path, "- a\n- b\n"))

    def it_refuses_a_key_repeated_in_one_mapping(self, tmp_path):
        text = ("patients: p.csv\nslides: s.csv\ntraining:\n  epochs: 5\n"
                "training:\n  bag_size: 8\n")
        with pytest.raises(StudyConfigError, match="'training' appears twice.*line 3"):
            load_config(write(tmp_path, text))
        with pytest.raises(StudyConfigError, match="'epochs' appears twice"):
            load_config(write(tmp_path, "patients: p.csv\nslides: s.csv\ntraining:\n"
                                        "  epochs: 5\n  epochs: 6\n"))

    def it_names_a_folder_or_a_latin1_file_given_as_the_study(self, tmp_path):
        with pytest.raises(StudyConfigError, match="not a file"):
            load_config(tmp_path)
        path = tmp_path / "latin.yaml"
        path.write_bytes("name: étude\npatients: p.csv\nslides: s.csv\n".encode("latin-1"))
        with pytest.raises(StudyConfigError, match="not UTF-8"):
            load_config(path)

    def it_rejects_a_missing_file_with_its_path(self, tmp_path):
        with pytest.raises(StudyConfigError, match="file not found"):
            load_config(tmp_path / "nope.yaml")

    def it_applies_dotted_overrides_before_validation(self, tmp_path):
        path = write(tmp_path, "patients: p.csv\nslides: s.csv\n")
        cfg = load_config(path, ["tiling.tile_size=256", "stains=[HE, PAS]", "split.seed=3"])
        assert cfg.tiling.tile_size == 256
        assert cfg.stains == ("HE", "PAS")
        assert cfg.split.seed == 3

    def it_checks_overrides_like_the_file(self, tmp_path):
        path = write(tmp_path, "patients: p.csv\nslides: s.csv\n")
        with pytest.raises(StudyConfigError, match="did you mean 'training.bag_size'"):
            load_config(path, ["training.bagsize=8"])

    def it_rejects_an_override_without_a_value(self, tmp_path):
        path = write(tmp_path, "patients: p.csv\nslides: s.csv\n")
        with pytest.raises(StudyConfigError, match="section.key=value"):
            load_config(path, ["tiling.tile_size"])

    def it_rejects_duplicate_stains_and_bad_powers(self, tmp_path):
        path = write(tmp_path, "patients: p.csv\nslides: s.csv\nstains: [HE, HE]\n"
                               "magnification:\n  powers: [20, -1]\n")
        with pytest.raises(StudyConfigError) as err:
            load_config(path)
        assert len(err.value.problems) == 2


def it_keeps_the_settings_reference_in_step_with_the_code():
    """docs/settings.md is generated from the pydantic models: regenerate it with
    `python -m lncr.study.settings_reference > docs/settings.md` after changing a setting."""
    from pathlib import Path

    from lncr.study.config import StudyConfig
    from lncr.study.settings_reference import reference_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text()
    assert page == reference_markdown() + "\n"
    for section in ("training", "sweep", "embedding", "evaluation", "explain"):
        model = StudyConfig.model_fields[section].annotation
        assert all(f"`{section}.{key}`" in page for key in model.model_fields)
