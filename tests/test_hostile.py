"""Messy input and faults: every case gives one clear line and the right exit code, or the
right result with what was left out named (docs/reliability.md lists the guarantees)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FAST, validated_copy
from lncr.cli import app
from lncr.data.entries import study_entries, unusable_patients
from lncr.layout import Layout
from lncr.study.validate import Study

QUICK = FAST + ["training.epochs=1", "training.embedding_dim=16", "training.transformer_heads=2",
                "training.feedforward_dim=32", "training.eval_tiles=8",
                "training.input_size=384", "training.architecture=resnet18",
                "training.pretrained=false", "training.bag_size=2"]


def _fail_tiling(study_yaml, patients: list[str], stain: str = "HE", mag: str = "10x") -> None:
    """Mark these patients' units failed in the tile index, as a broken slide would."""
    layout = Layout(study_yaml.parent / "lncr-output")
    index = pd.read_csv(layout.tiles_index, dtype=str, keep_default_na=False)
    hit = index.patient_id.isin(patients) & (index.stain == stain) & (index.magnification == mag)
    index.loc[hit, "status"] = "failed"
    index.loc[hit, "error"] = "the slide could not be decoded"
    index.to_csv(layout.tiles_index, index=False)


class DescribePatientsWithoutTiles:
    def it_names_each_one_with_the_reason(self, tiled, tmp_path):
        study_yaml = validated_copy(tiled, tmp_path / "s")
        _fail_tiling(study_yaml, ["DEV-001"])
        study = Study.load(study_yaml, FAST)
        lost = unusable_patients(study, "HE", "10x")
        assert [u["patient_id"] for u in lost] == ["DEV-001"]
        assert "could not be decoded" in lost[0]["reason"] and lost[0]["cohort"]
        assert "DEV-001" not in {e.patient_id for e in study_entries(study, "HE", "10x")}
        assert unusable_patients(study, "HE", "20x") == []

    @pytest.mark.slow  # tiles or trains on the phantom
    def it_refuses_to_train_when_the_training_slides_lose_a_label(self, tiled, tmp_path):
        study_yaml = validated_copy(tiled, tmp_path / "s")
        split = pd.read_csv(study_yaml.parent / "lncr-output" / "study" / "split.csv",
                            dtype={"patient_id": str})
        positives = list(split[(split.split == "train") & (split.label == 1)].patient_id)
        _fail_tiling(study_yaml, positives)
        sets = sum((["--set", s] for s in QUICK), [])
        result = CliRunner().invoke(app, ["train", str(study_yaml), "--stain", "HE",
                                          "--magnification", "10x", "--device", "cpu", *sets])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "too few training patients with tiles: 0 CR" in text
        assert all(p in text for p in positives)
        assert "is left out" in text  # the warning line per patient
        assert not (study_yaml.parent / "lncr-output" / "runs").exists()

    @pytest.mark.slow
    def it_records_the_patients_a_run_left_out(self, tiled, tmp_path):
        study_yaml = validated_copy(tiled, tmp_path / "s")
        split = pd.read_csv(study_yaml.parent / "lncr-output" / "study" / "split.csv",
                            dtype={"patient_id": str})
        one = split[split.split == "train"].patient_id.iloc[0]
        _fail_tiling(study_yaml, [one])
        # one patient of an outcome is left to train: below the default minimum of two
        sets = sum((["--set", s] for s in QUICK + ["training.min_patients_per_outcome=1"]), [])
        result = CliRunner().invoke(app, ["train", str(study_yaml), "--stain", "HE",
                                          "--magnification", "10x", "--device", "cpu", *sets])
        assert result.exit_code == 0, result.output
        config = next((study_yaml.parent / "lncr-output" / "runs").rglob("config.json"))
        recorded = json.loads(config.read_text())["patients_without_tiles"]
        assert [u["patient_id"] for u in recorded] == [one]


class DescribeReportOfLeftOutPatients:
    def it_shows_a_warning_box_naming_them(self, tmp_path):
        from lncr.report.sections import unusable_box

        folder = tmp_path / "predictions"
        folder.mkdir()
        (folder / "predictions.json").write_text(json.dumps({"patients_without_tiles": {
            "HE 20x": [{"patient_id": "P<1>", "cohort": "external", "reason": "tiling failed"}]
        }}))
        box = unusable_box(tmp_path)
        assert "HE 20x" in box and "P&lt;1&gt;" in box and "tiling failed" in box
        assert unusable_box(tmp_path / "nothing") == ""


def _flip_tile_byte(store) -> None:
    """Flip one byte inside the first tile's data, as a failing disk would."""
    import zipfile

    with zipfile.ZipFile(store) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("tiles/"))
    with open(store, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        where = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0xFF]))


class DescribeDamagedTileStores:
    def it_names_the_store_and_the_fix_when_a_tile_cannot_be_read(self, tiled, tmp_path):
        from lncr.tiling.store import CorruptTileStore, TileStore

        study_yaml = validated_copy(tiled, tmp_path / "s")
        store = next((study_yaml.parent / "lncr-output" / "tiles" / "HE" / "10x").glob("*.zip"))
        _flip_tile_byte(store)
        with TileStore(store) as s, pytest.raises(CorruptTileStore) as err:
            s[0]
        assert str(store) in str(err.value) and "lncr tile" in str(err.value)

    @pytest.mark.slow  # tiles or trains on the phantom
    def it_cuts_a_damaged_store_again_instead_of_reusing_it(self, tiled, tmp_path):
        from lncr.tiling.run import tile_study
        from lncr.tiling.store import TileStore

        study_yaml = validated_copy(tiled, tmp_path / "s")
        store = next((study_yaml.parent / "lncr-output" / "tiles" / "HE" / "10x").glob("*.zip"))
        _flip_tile_byte(store)
        report = tile_study(Study.load(study_yaml, FAST), workers=1)
        by_store = {str(r.unit.store): r for r in report.results}
        redone = by_store[str(store)]
        assert redone.status == "ok" and "damaged_store" in redone.extra
        assert {r.status for s, r in by_store.items() if s != str(store)} == {"reused"}
        with TileStore(store) as s:
            assert s.damaged() is None


#: Bad command-line values: (arguments, what the one line must name).
BAD_OPTIONS = [
    (["train", "{study}", "--stain", "HE", "--magnification", "10x", "--device", "banana"],
     "banana"),
    (["train", "{study}", "--stain", "HE", "--magnification", "10x", "--bag-size", "0"],
     "--bag-size"),
    (["train", "{study}", "--stain", "HE", "--magnification", "10x", "--bag-size", "-3"],
     "--bag-size"),
    (["train", "{study}", "--stain", "HE", "--magnification", "10x", "--device", "cuda:7"],
     "cuda:7"),
    (["predict", "{folder}", "--tiles", "all", "--chunk-size", "-5"], "--chunk-size"),
    (["sweep", "{study}", "--executor", "slurm"], "slurm"),
    (["tile", "{study}", "--workers", "-1"], "--workers"),
    (["validate", "{folder}"], "not a file"),
]


@pytest.mark.parametrize(("args", "named"), BAD_OPTIONS,
                         ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD_OPTIONS])
def it_answers_a_bad_option_with_one_line_and_exit_2(args, named, make_study, tmp_path):
    study = make_study()
    argv = [a.format(study=study, folder=tmp_path) for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and named in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                      SystemExit)


def it_explains_a_full_disk_as_failed_work():
    from lncr.cli.common import describe_error

    code, line = describe_error(OSError(28, "No space left on device", "run.json"))
    assert code == 1 and "free some space" in line and "run.json" in line


_HOLD = """
import sys
from pathlib import Path
from lncr.locks import output_lock
with output_lock(Path(sys.argv[1]), "lncr sweep"):
    print("held", flush=True)
    sys.stdin.readline()
"""


class DescribeOneCommandPerOutputFolder:
    @pytest.mark.slow  # tiles or trains on the phantom
    def it_refuses_a_second_command_naming_the_one_at_work(self, tiled, tmp_path):
        import subprocess
        import sys

        study_yaml = validated_copy(tiled, tmp_path / "s")
        out = study_yaml.parent / "lncr-output"
        holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert holder.stdout.readline().strip() == "held"
            sets = sum((["--set", s] for s in FAST), [])
            result = CliRunner().invoke(app, ["tile", str(study_yaml), *sets])
            assert result.exit_code == 1, result.output
            text = " ".join(result.output.split())
            assert "in use by lncr sweep" in text and f"pid {holder.pid}" in text
        finally:
            holder.communicate("\n")
        result = CliRunner().invoke(app, ["tile", str(study_yaml), *sets])
        assert result.exit_code == 0, result.output  # released when the holder ended

    def it_is_released_when_its_holder_is_killed(self, tmp_path):
        import signal
        import subprocess
        import sys

        from lncr.locks import output_lock

        holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with output_lock(tmp_path, "test"):  # no stale lock left behind
            assert (tmp_path / ".lncr.lock").exists()


_PARENT = """
import os, sys
from lncr.workers import process_pool
pool = process_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
sys.stdin.readline()
"""


def it_leaves_no_worker_behind_when_lncr_is_killed():
    import os
    import select
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", _PARENT], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    worker = int(parent.stdout.readline())
    fd = os.pidfd_open(worker)  # readable once the worker has exited
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        readable, _, _ = select.select([fd], [], [], 60)
        assert readable, f"worker {worker} outlived its killed parent"
    finally:
        os.close(fd)


def it_names_a_folder_given_as_a_table(make_study):
    from lncr.study.validate import load_study

    study_yaml = make_study()
    (study_yaml.parent / "patients.csv").unlink()
    (study_yaml.parent / "patients.csv").mkdir()
    result = CliRunner().invoke(app, ["validate", str(study_yaml), "--no-files"])
    assert result.exit_code == 2 and "is a folder, not a CSV file" in result.output
    assert load_study(study_yaml, check_files=False).problems.errors


def it_blames_the_override_not_the_file_for_a_bad_set(tmp_path):
    from lncr.study.config import StudyConfigError
    from lncr.study.config_file import load_config

    study = tmp_path / "study.yaml"
    study.write_text("patients: p.csv\nslides: s.csv\ntraining:\n  epochs: 8\n")
    with pytest.raises(StudyConfigError) as err:
        load_config(study, ["training.epochs=abc"])
    assert "--set training.epochs=abc" in str(err.value) and "line 4" not in str(err.value)
    study.write_text("patients: p.csv\nslides: s.csv\ntraining:\n  epochs: x\n")
    with pytest.raises(StudyConfigError, match="study.yaml line 4"):
        load_config(study)


@pytest.mark.slow
def it_keeps_a_finished_run_when_force_cannot_start(tiled, tmp_path):
    """--force checks the tiles (and loads the weights) before it replaces anything."""
    study_yaml = validated_copy(tiled, tmp_path / "s")
    args = ["train", str(study_yaml), "--stain", "HE", "--magnification", "10x", "--device",
            "cpu", *sum((["--set", s] for s in QUICK), [])]
    assert CliRunner().invoke(app, args).exit_code == 0
    run = next((study_yaml.parent / "lncr-output" / "runs").rglob("done.json")).parent
    before = {p.name: p.read_bytes() for p in run.glob("*.pt")}
    result = CliRunner().invoke(app, args + ["--force", "--set", "tiling.tile_size=256"])
    assert result.exit_code == 2 and "128 px" in " ".join(result.output.split())
    assert (run / "done.json").exists()
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == before
