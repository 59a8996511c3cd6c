"""Describe the published recipe: `recipe: published` yields exactly the settings that
docs/fidelity.md's table lists in its "Published switch" column, and explicit settings win."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO
from lncr.study.config import StudyConfig
from lncr.study.recipes import PUBLISHED, recipe_deviations

SETTING = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)=([^`]+)`")


#: A citation of the authors' repository: `file:line` (optionally `file@commit:line`).
SOURCE = re.compile(r"`[\w./]+\.(?:py|sh|md)(?:@[0-9a-f]{7})?:\d+`")


def table_column(name: str) -> list[str]:
    """The cells of one column of the ledger's table, row by row."""
    lines = (REPO / "docs" / "fidelity.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Stage |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    where = columns.index(name)
    cells = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(row) == len(columns), line
        cells.append(row[where])
    return cells


def switch_column() -> list[tuple[str, object]]:
    """Every `key=value` of the table's "Published switch" column."""
    return [(k, yaml.safe_load(v)) for cell in table_column("Published switch")
            for k, v in SETTING.findall(cell)]


def value_at(config: StudyConfig, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return list(config) if isinstance(config, tuple) else config


class DescribePublishedRecipe:
    def it_gives_exactly_the_values_the_fidelity_table_lists(self):
        pairs = switch_column()
        assert len(pairs) >= len(PUBLISHED)
        config = StudyConfig(patients="p.csv", slides="s.csv", recipe="published")
        for key, value in pairs:
            assert value_at(config, key) == value, key

    def it_lists_every_setting_of_the_recipe_in_the_table(self):
        listed = {key for key, _ in switch_column()}
        assert set(PUBLISHED) <= listed

    def it_cites_the_authors_file_and_line_in_every_row(self):
        for cell in table_column("Authors' source"):
            assert SOURCE.search(cell) or cell == "— (not in the authors' code)", cell

    def it_lets_an_explicit_setting_win_and_names_it(self):
        config = StudyConfig(patients="p.csv", slides="s.csv", recipe="published",
                             training={"batch_norm": "frozen"})
        assert config.training.batch_norm == "frozen"
        assert config.training.bags_per_step == 4  # the rest of the recipe still applies
        assert recipe_deviations(config) == {"training.batch_norm": ("train", "frozen")}

    def it_changes_nothing_without_the_switch(self):
        config = StudyConfig(patients="p.csv", slides="s.csv")
        assert config.training.batch_norm == "frozen" and recipe_deviations(config) == {}

    def it_refuses_an_unknown_recipe(self):
        with pytest.raises(ValueError, match="recipe"):
            StudyConfig(patients="p.csv", slides="s.csv", recipe="paper")

    def it_is_reachable_from_the_command_line(self, make_study):
        from typer.testing import CliRunner

        from lncr.cli import app

        study = make_study(yaml_extra="training:\n  batch_norm: frozen\n")
        result = CliRunner().invoke(app, ["validate", str(study), "--no-files", "--set",
                                          "recipe=published"])
        assert result.exit_code == 0, result.output
        assert "leaves recipe 'published'" in result.output
        recorded = yaml.safe_load((study.parent / "lncr-output" / "study" / "config.yaml")
                                  .read_text())["settings"]
        assert recorded["recipe"] == "published"
        assert recorded["training"]["channel_stats"] == "published"
