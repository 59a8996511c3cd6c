"""Hostile input, round two: every failure names its file (and row) with the fix, nothing stale
is reused, nothing expands without bound, and no write goes through a file another folder
shares (docs/reliability.md)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO
from lncr.cli import app


def validate(study: Path, *extra: str):
    return CliRunner().invoke(app, ["validate", str(study), "--no-files", *extra])


def one_line(output: str) -> str:
    return " ".join(output.split())


class DescribeTables:
    @pytest.mark.parametrize("header,named", [
        ("patient_id,cohort,Label,label ", "'Label' and 'label '"),
        ("patient_id,cohort,label,label", "'label' and 'label'")])
    def it_refuses_columns_that_read_alike(self, make_study, header, named):
        rows = [r + ("1",) for r in [("P1", "development", "1"), ("P2", "development", "0")]]
        result = validate(make_study(patients=rows, patient_header=header))
        assert result.exit_code == 2 and "internal error" not in result.output
        text = one_line(result.output)
        assert named in text and "same column" in text and "patients.csv" in text

    def it_refuses_two_path_columns_instead_of_using_the_first(self, make_study, tmp_path):
        study = make_study()
        table = pd.read_csv(study.parent / "slides.csv", dtype=str)
        table["Path"] = "elsewhere.tiff"
        table.to_csv(study.parent / "slides.csv", index=False)
        result = validate(study)
        assert result.exit_code == 2 and "'path' and 'Path'" in one_line(result.output)

    def it_refuses_a_patient_and_stain_that_together_make_too_long_a_file_name(
            self, make_study, tiny_slide_factory):
        pid, stain = "P" * 200, "S" * 100
        rows = [(pid, "development", "1"), ("P2", "development", "0")]
        slide = str(tiny_slide_factory("short.tiff"))
        study = make_study(patients=rows, slides=[(p, stain, slide) for p in (pid, "P2")],
                           stains=(stain,))
        result = validate(study)
        assert result.exit_code == 2 and "internal error" not in result.output
        assert "make a file name of" in one_line(result.output)
        assert "shorten the patient ID or the stain name" in one_line(result.output)

    def it_reads_a_stain_typed_in_decomposed_unicode_as_the_same_stain(self, make_study):
        study = make_study(stains=("PAS-\u00fc",))  # composed in study.yaml
        table = pd.read_csv(study.parent / "slides.csv", dtype=str)
        table["stain"] = "PAS-u\u0308"  # as macOS writes it
        table.to_csv(study.parent / "slides.csv", index=False)
        result = validate(study)
        assert result.exit_code == 0, result.output
        study.write_text(study.read_text().replace("PAS-\u00fc", "PAS-u\u0308"))
        assert validate(study).exit_code == 0  # decomposed in study.yaml too

    def it_spells_out_names_that_look_alike_but_differ(self, make_study):
        study = make_study()
        table = pd.read_csv(study.parent / "slides.csv", dtype=str)
        table.loc[0, "stain"] = "H\u0415"  # a Cyrillic Е
        table.to_csv(study.parent / "slides.csv", index=False)
        text = one_line(validate(study).output)
        assert "unknown stain 'H\u0415' (written 'H\\u0415')" in text

    def it_names_an_invisible_character_in_an_identifier(self, make_study):
        rows = [("P\u200d1", "development", "1"), ("P2", "development", "0")]
        text = one_line(validate(make_study(patients=rows)).output)
        assert "U+200D (ZERO WIDTH JOINER)" in text and "control character" not in text

    def it_escapes_a_nul_in_a_label_and_names_the_row_of_a_nul_in_a_path(self, make_study):
        rows = [("P1", "development", "1\x00"), ("P2", "development", "0")]
        study = make_study(patients=rows)
        table = pd.read_csv(study.parent / "slides.csv", dtype=str)
        table.loc[1, "path"] = "a\x00b.tiff"
        table.to_csv(study.parent / "slides.csv", index=False)
        result = validate(study)
        assert result.exit_code == 2 and "\x00" not in result.output
        text = one_line(result.output)
        assert "label '1\\x00'" in text and "holds a NUL character" in text
        assert "slides.csv:3" in text  # the row of the NUL path

    def it_refuses_a_symlink_loop_as_one_more_bad_row(self, make_study, tmp_path):
        loop = tmp_path / "loop.svs"
        os.symlink(loop, loop)
        study = make_study()
        table = pd.read_csv(study.parent / "slides.csv", dtype=str)
        table.loc[0, "path"] = str(loop)
        table.loc[1, "stain"] = "XX"  # another error, which must still be reported
        table.to_csv(study.parent / "slides.csv", index=False)
        result = validate(study)
        text = one_line(result.output)
        assert result.exit_code == 2 and "internal error" not in text
        assert "loop.svs" in text and "unknown stain 'XX'" in text

    def it_hands_a_symlink_loop_to_the_slide_checks_when_scoring(self, tmp_path):
        from lncr.bundle.apply import read_slide_table, slides_from_pairs

        loop = tmp_path / "loop.svs"
        os.symlink(loop, loop)
        assert slides_from_pairs("P1", [f"HE={loop}"]).path[0] == str(loop)
        (tmp_path / "slides.csv").write_text("patient_id,stain,path\nP1,HE,loop.svs\n")
        assert read_slide_table(tmp_path / "slides.csv").path[0] == str(loop)

    def it_says_once_that_a_listed_stain_has_no_slide(self, make_study):
        study = make_study(stains=("HE",))
        study.write_text(study.read_text().replace("stains: [HE]", "stains: [HE, PASM]"))
        result = validate(study)
        text = one_line(result.output)
        assert result.exit_code == 0 and text.count("no slide of stain(s) PASM") == 1
        assert "lacks stain(s) PASM" not in text  # not once per patient as well


class DescribeStudyYaml:
    BOMB = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9 if i else ["x"] * 9) + "]\n"
                   for i in range(10))

    def it_refuses_an_alias_bomb_before_expanding_it(self, make_study):
        study = make_study(yaml_extra="split:\n  extra:\n" + "".join(
            "    " + line + "\n" for line in self.BOMB.splitlines()))
        result = validate(study)
        assert result.exit_code == 2 and "expand to more than 100,000 values" in result.output
        assert len(result.output) < 2000

    def it_refuses_an_alias_bomb_given_with_set(self, make_study):
        value = "{" + ", ".join(line.replace(":", ":", 1) for line in
                                self.BOMB.splitlines()) + "}"
        result = validate(make_study(), "--set", f"split.extra={value}")
        assert result.exit_code == 2 and "expand to more than" in result.output
        assert len(result.output) < 2000

    def it_refuses_a_python_tag_in_set_as_bad_input(self, make_study):
        result = validate(make_study(), "--set",
                          'training.epochs=!!python/object/apply:os.system ["id"]')
        assert result.exit_code == 2 and "internal error" not in result.output
        assert "not valid YAML" in one_line(result.output)

    def it_merges_a_mapping_given_with_set_into_the_section(self, make_study):
        study = make_study(yaml_extra="training:\n  seed: 7\n")
        result = validate(study, "--set", "training={epochs: 9}")
        assert result.exit_code == 0, result.output
        recorded = json.loads(json.dumps(__import__("yaml").safe_load(
            (study.parent / "lncr-output" / "study" / "config.yaml").read_text())))
        assert recorded["settings"]["training"]["epochs"] == 9
        assert recorded["settings"]["training"]["seed"] == 7  # the file's setting is kept


class DescribeSlides:
    def it_says_a_mirax_data_folder_is_missing(self, tmp_path):
        from lncr.slides.reader import SlideReadError, probe_slide

        slide = tmp_path / "biopsy.mrxs"
        slide.write_bytes(b"not read")
        with pytest.raises(SlideReadError, match="MIRAX data folder biopsy/"):
            probe_slide(slide)

    def it_tells_a_slide_copied_over_another_with_the_same_size_and_date(self, real_data,
                                                                          tmp_path):
        from lncr.slides.reader import open_slide

        source = real_data / "CMU-1-Small-Region.svs"
        a, b = tmp_path / "a.svs", tmp_path / "b.svs"
        shutil.copy2(source, a)
        data = bytearray(source.read_bytes())
        data[-100:] = bytes(100)  # another slide of the same size
        b.write_bytes(bytes(data))
        os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
        with open_slide(a) as sa, open_slide(b) as sb:
            assert sa.content_id() != sb.content_id()
            assert sa.content_id().split(":")[0]  # OpenSlide's quickhash-1 is part of it
        shutil.copy2(a, tmp_path / "c.svs")
        with open_slide(a) as sa, open_slide(tmp_path / "c.svs") as sc:
            assert sa.content_id() == sc.content_id()  # a copy is the same slide


def it_warns_when_a_slide_kept_its_colours_on_many_tiles(capsys):
    from types import SimpleNamespace

    from lncr.cli.tiling import _problems
    from lncr.tiling.unit import TileUnit, UnitResult

    unit = TileUnit("P1", "development", "HE", "p1.svs", None, "10x", 1.0, "p1.tiles.zip")
    results = [UnitResult(unit, "ok", kept=40, normaliser_fallbacks=40),
               UnitResult(unit, "ok", kept=40, normaliser_fallbacks=1)]  # a few: normal
    _problems(SimpleNamespace(results=results))
    text = one_line(capsys.readouterr().out)
    assert text.count("WARNING P1 HE 10x: 40 of 40 tiles (100%) kept their own colours") == 1
    assert "1 of 40" not in text


class DescribeAnnotations:
    def it_covers_the_slide_with_a_polygon_drawn_at_billions_of_pixels(self, tmp_path):
        import warnings

        from lncr.slides.annotations import read_regions

        ring = [[-3e9, -3e9], [3e9, -3e9], [3e9, 3e9], [-3e9, 3e9], [-3e9, -3e9]]
        path = tmp_path / "huge.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
            "type": "Feature", "properties": {"objectType": "annotation"},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no NumPy cast warning leaks
            mask = read_regions(path).mask(0, 0, 120, 80, 25.0)
        assert mask.all()

    def it_clips_only_what_lies_off_the_map(self):
        import numpy as np

        from lncr.slides.annotations import clip_ring

        ring = np.array([[10.0, 10.0], [1e12, 10.0], [10.0, 40.0]])
        clipped = clip_ring(ring, 100, 50)
        assert np.abs(clipped).max() <= 104
        inside = np.array([[1.0, 1.0], [5.0, 1.0], [5.0, 5.0]])
        assert clip_ring(inside, 100, 50) is inside


class DescribeCheckpoints:
    def it_names_a_damaged_checkpoint_of_a_finished_run_and_how_to_retrain_it(self, tmp_path):
        from lncr.fileio import DamagedFile
        from lncr.training.predict import load_run

        folder = tmp_path / "run"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "last.pt").write_bytes(b"PK\x03\x04 truncated")
        with pytest.raises(DamagedFile) as caught:
            load_run(folder, "last", "cpu")
        assert str(folder / "last.pt") in str(caught.value)
        assert "lncr sweep" in str(caught.value) and "delete the run folder" in str(caught.value)

    @pytest.mark.slow  # trains
    def it_sets_aside_an_unfinished_runs_damaged_checkpoint_and_trains_again(self, tiled,
                                                                           tmp_path):
        from conftest import tiled_entries
        from lncr.study.config import TrainingSettings
        from lncr.training.loop import RunSpec
        from lncr.training.trainer import train_run

        entries = tiled_entries(tiled, "HE", "10x")
        settings = TrainingSettings(pretrained=False, architecture="resnet18", epochs=1,
                                    warmup_epochs=0, embedding_dim=16, transformer_heads=2,
                                    feedforward_dim=32, eval_tiles=4, bag_size=2,
                                    loader_workers=0, input_size=64, crop_size=64)
        spec = RunSpec("HE", "10x", "resnet18", 2, 0)
        folder = train_run(spec, entries, settings, tmp_path / "runs", tile_size=128,
                           device="cpu")
        (folder / "done.json").unlink()  # unfinished, with a damaged last.pt
        (folder / "last.pt").write_bytes((folder / "last.pt").read_bytes()[:200])
        with pytest.warns(RuntimeWarning, match="set aside"):
            train_run(spec, entries, settings, tmp_path / "runs", tile_size=128, device="cpu")
        assert (folder / "last.pt.damaged").exists() and (folder / "done.json").exists()
        assert torch.load(folder / "last.pt", weights_only=True)["complete"]


class DescribeWrites:
    def it_names_the_file_when_the_disk_is_full(self, tmp_path, monkeypatch):
        from lncr.fileio import WriteFailed, atomic_save_torch

        def full(obj, path):
            Path(path).write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

        monkeypatch.setattr(torch, "save", full)
        monkeypatch.setattr("lncr.fileio._disk_full", lambda path, exc: True)
        with pytest.raises(WriteFailed, match="no space left on the device to write .*last.pt"):
            atomic_save_torch({}, tmp_path / "last.pt")
        assert list(tmp_path.iterdir()) == []  # no half file left

    def it_names_the_file_of_any_other_failed_write(self, tmp_path):
        from lncr.fileio import WriteFailed, atomic_write_text

        with pytest.raises(WriteFailed, match="cannot write .*missing/x.csv"):
            atomic_write_text(tmp_path / "missing" / "x.csv", "a")

    def it_writes_user_visible_files_only_through_fileio(self):
        """No module under src/ writes a file by itself (``savefig``, ``write_text``,
        ``write_bytes``, ``torch.save``, ``np.save``, ``to_csv(path)``, ``open(…, "w")``):
        every write goes through lncr.fileio, which replaces files atomically."""
        allowed = {"fileio.py"}
        offenders = []
        for path in (REPO / "src" / "lncr").rglob("*.py"):
            if path.name in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                writes = name in ("savefig", "write_text", "write_bytes") or (
                    name == "save" and isinstance(node.func, ast.Attribute)
                    and getattr(node.func.value, "id", "") in ("torch", "np")) or (
                    name == "to_csv" and node.args) or (
                    name == "open" and any(isinstance(a, ast.Constant) and isinstance(
                        a.value, str) and "w" in a.value for a in node.args[1:]))
                if writes and not _to_buffer(node):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
        assert offenders == []


def _to_buffer(node: ast.Call) -> bool:
    """``fig.savefig(buf)`` into memory, or a write to the temporary name of an atomic
    writer (``tmp``), is not a user-visible write."""
    first = node.args[0] if node.args else None
    return isinstance(first, ast.Name) and first.id in ("buf", "tmp", "buffer")


@pytest.mark.slow  # evaluates and reports a study twice
def it_leaves_a_hard_linked_original_untouched(finished_study, tmp_path):
    """A finished study copied with hard links and then validated, evaluated and reported in
    the copy: the original is byte-identical."""
    original = finished_study.parent
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(original), str(copy)], check=True)
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    study = copy / "study.yaml"
    for args in (["validate", str(study), "--no-files"], ["evaluate", str(study)] + BOOT,
                 ["report", str(study)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    changed = [str(p.relative_to(original)) for p, data in before.items()
               if p.read_bytes() != data]
    assert changed == []
    assert (copy / "lncr-output" / ".lncr.lock").stat().st_ino != (
        original / "lncr-output" / ".lncr.lock").stat().st_ino  # each folder its own lock


class DescribeReportOfDamagedOutputs:
    @pytest.mark.parametrize("damage", ["quote", "columns", "empty", "json"])
    def it_leaves_out_the_section_naming_the_file_and_the_command(self, finished_study,
                                                                 damage):
        study = finished_study
        out = study.parent / "lncr-output" / "explain" / "gradcam"
        out.mkdir(parents=True, exist_ok=True)
        table, record = out / "gradcam.csv", out / "gradcam.json"
        table.write_text("patient_id,stain,magnification\nP1,HE,10x\n")
        record.write_text("{}")
        if damage == "quote":
            table.write_text('patient_id,stain,magnification\n"P1,HE,10x\n')
        elif damage == "columns":
            table.write_text("a,b\n1,2\n")
        elif damage == "empty":
            table.write_text("")
        else:
            record.write_text("{broken")
        result = CliRunner().invoke(app, ["report", str(study)])
        assert result.exit_code == 0, result.output
        text = one_line(result.output)
        damaged = record if damage == "json" else table
        assert f"WARNING the report's Explanations section is left out: {damaged}" in text
        assert "lncr explain gradcam STUDY.yaml" in text
        html = (study.parent / "lncr-output" / "report" / "report.html").read_text()
        assert "This section is left out" in html and "Results" in html


class DescribeBundles:
    def it_says_a_newer_format_without_calling_the_bundle_damaged(self, tmp_path):
        from lncr.bundle.archive import BundleError, open_bundle, write_bundle

        path = write_bundle(tmp_path / "b.lncr", {"x.json": b"{}"}, {})
        import zipfile

        with zipfile.ZipFile(path) as zf:
            parts = {i.filename: zf.read(i) for i in zf.infolist()}
        manifest = json.loads(parts["manifest.json"])
        manifest["format_version"] = 99
        parts["manifest.json"] = json.dumps(manifest).encode()
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in parts.items():
                zf.writestr(name, data)
        with pytest.raises(BundleError) as caught:
            open_bundle(path)
        assert "99" in str(caught.value) and "truncated" not in str(caught.value)


def it_never_prints_an_unbounded_message():
    from lncr.cli.common import describe_error

    code, message = describe_error(ValueError("x" * 1_000_000 + "\x00"))
    assert code == 2 and len(message) < 2100 and "\x00" not in message


BOOT = ["--set", "evaluation.bootstrap_resamples=100"]


@pytest.fixture
def finished_study(tmp_path) -> Path:
    """A study with predictions, evaluated (tables and figures) and reported: its YAML."""
    from test_evaluate import cohort_rows, write_predictions, write_study

    folder = tmp_path / "finished"
    folder.mkdir()
    rows = pd.concat([cohort_rows(model, kind, stain, split, n, 0.4)
                      for model, kind, stain in (("HE", "stain ensemble", "HE"),
                                                 ("PAS", "stain ensemble", "PAS"),
                                                 ("multi-stain", "multi-stain ensemble", ""))
                      for split, n in (("val", 12), ("train", 6), ("external", 12))],
                     ignore_index=True)
    write_study(folder, rows)
    write_predictions(folder / "lncr-output" / "predictions", rows)
    for args in (["evaluate", str(folder / "study.yaml")] + BOOT,
                 ["report", str(folder / "study.yaml")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    return folder / "study.yaml"
