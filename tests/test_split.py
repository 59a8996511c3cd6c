"""Describe the patient-level split: no leakage, stratified, stable, persisted."""

from __future__ import annotations

import pandas as pd
import pytest

from lncr.study.split import SplitMismatchError, resolve_split, stratified_split, write_split
from lncr.study.validate import load_study, save_study_record


def cohort(n_pos: int, n_neg: int, n_ext: int = 5) -> pd.DataFrame:
    rows = [(f"D{i:03d}", "development", 1) for i in range(n_pos)]
    rows += [(f"D{n_pos + i:03d}", "development", 0) for i in range(n_neg)]
    rows += [(f"E{i:03d}", "external", i % 2) for i in range(n_ext)]
    df = pd.DataFrame(rows, columns=["patient_id", "cohort", "label"])
    df["split"] = ""
    return df


class DescribeStratifiedSplit:
    def it_puts_every_development_patient_on_exactly_one_side(self):
        split = stratified_split(cohort(30, 20), 0.25, seed=1)
        assert split.patient_id.is_unique
        assert set(split.patient_id) == {f"D{i:03d}" for i in range(50)}
        assert set(split.split) == {"train", "val"}

    def it_never_includes_external_patients(self):
        split = stratified_split(cohort(6, 6, n_ext=10), 0.3, seed=0)
        assert not split.patient_id.str.startswith("E").any()

    def it_is_stratified_by_label(self):
        split = stratified_split(cohort(40, 20), 0.25, seed=2)
        val = split[split.split == "val"]
        assert (val.label == 1).sum() == 10 and (val.label == 0).sum() == 5

    def it_keeps_both_labels_in_both_sides_of_a_tiny_cohort(self):
        split = stratified_split(cohort(2, 2), 0.2, seed=0)
        for side in ("train", "val"):
            assert set(split[split.split == side].label) == {0, 1}

    def it_is_the_same_for_the_same_seed_and_row_order(self):
        a = stratified_split(cohort(25, 25), 0.2, seed=5)
        shuffled = cohort(25, 25).sample(frac=1, random_state=3)
        b = stratified_split(shuffled, 0.2, seed=5)
        pd.testing.assert_frame_equal(a, b)

    def it_changes_with_the_seed(self):
        a = stratified_split(cohort(25, 25), 0.2, seed=5)
        b = stratified_split(cohort(25, 25), 0.2, seed=6)
        assert list(a.split) != list(b.split)


class DescribeGivenSplit:
    def it_uses_the_split_column_as_written(self):
        df = cohort(3, 3, n_ext=0)
        df["split"] = ["val", "train", "train", "train", "val", "train"]
        table, source = resolve_split(df, 0.5, seed=0)
        assert source == "patients.csv"
        assert list(table.split) == ["val", "train", "train", "train", "val", "train"]


class DescribePersistedSplit:
    def it_writes_then_reuses_an_identical_split(self, tmp_path):
        table = stratified_split(cohort(10, 10), 0.2, seed=0)
        csv = write_split(tmp_path, table, "seeded", 0.2, 0)
        first = csv.read_bytes()
        write_split(tmp_path, table, "seeded", 0.2, 0)
        assert csv.read_bytes() == first
        assert (tmp_path / "split.json").exists()

    def it_refuses_a_split_that_would_move_patients(self, tmp_path):
        write_split(tmp_path, stratified_split(cohort(10, 10), 0.2, seed=0), "seeded", 0.2, 0)
        with pytest.raises(SplitMismatchError, match="Delete the file"):
            write_split(tmp_path, stratified_split(cohort(10, 10), 0.2, seed=1), "seeded", 0.2, 1)

    def it_records_the_split_and_effective_settings_of_a_study(self, make_study):
        study = load_study(make_study(yaml_extra="split:\n  seed: 4\n"))
        folder = save_study_record(study)
        written = pd.read_csv(folder / "split.csv")
        assert set(written.patient_id) == {"P1", "P2", "P3", "P4"}
        assert "seed: 4" in (folder / "config.yaml").read_text()
        assert '"seed": 4' in (folder / "split.json").read_text()
