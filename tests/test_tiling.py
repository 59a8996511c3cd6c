"""Describe lncr tile: the grid, the tissue rule, magnifications, the store, resume, bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import FAST
from lncr.slides.reader import open_slide
from lncr.study.validate import Study
from lncr.tiling.run import export_tiles, tile_study
from lncr.tiling.store import TileStore, TileStoreWriter, read_meta
from lncr.tiling.tissue import background_fraction, grey, keeps
from lncr.tiling.unit import TileParams, TileUnit, grid, tile_unit


def index_of(study_dir):
    """The tile index with its (relative) paths resolved, as every reader reads it."""
    from lncr.layout import Layout

    return Layout(study_dir / "lncr-output").read_tiles_index()


def unit(slide, mag="20x", mpp_target=0.5, mpp=None, store=None, tmp=None):
    return TileUnit("P1", "development", "HE", str(slide), mpp, mag, mpp_target,
                    str(store or (tmp / f"{mag}.tiles.zip")))


class DescribeTissueRule:
    def it_uses_the_pillow_grey_value(self):
        rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        pil = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
        assert np.abs(grey(rgb).astype(int) - pil).max() <= 1

    def it_drops_a_tile_with_more_than_half_background(self):
        tile = np.full((10, 10, 3), 100, np.uint8)
        tile[:5] = 226  # exactly 50 % above 225: kept
        assert background_fraction(tile) == 0.5 and keeps(tile)
        tile[5, 0] = 226  # 51 %: dropped
        assert not keeps(tile)

    def it_counts_225_as_tissue(self):
        assert keeps(np.full((4, 4, 3), 225, np.uint8), max_background_fraction=0.0)


class DescribeGrid:
    def it_covers_the_whole_slide_including_edge_cells(self):
        cells = grid(1000, 700, 256.0)
        assert len(cells) == 4 * 3
        assert cells[-1] == (768, 512)

    def it_accounts_for_every_cell(self, tiled):
        index = index_of(tiled)
        ok = index[index.status == "ok"]
        assert ((ok.prefiltered + ok.rejected + ok.kept) == ok.grid_cells).all()
        assert ok.prefiltered.sum() > 0  # empty glass was skipped before being read

    def it_reads_cells_over_the_edge_as_glass(self, tiled):
        with open_slide(tiled / "slides" / "DEV-001_HE.tiff") as slide:
            w, h = slide.dimensions
            edge = slide.read(0, w - 10, h - 10, 20, 20)
        assert (edge[10:, :] == 255).all() and (edge[:, 10:] == 255).all()

    def it_keeps_the_same_tiles_with_and_without_the_prefilter(self, tiled, tmp_path):
        slide = tiled / "slides" / "DEV-002_PAS.tiff"
        results = {}
        for pre in (True, False):
            params = TileParams(tile_size=128, prefilter=pre, encoding="jpeg")
            u = unit(slide, tmp=tmp_path / str(pre))
            r = tile_unit(u, params, None)
            with TileStore(u.store) as store:
                results[pre] = store.coords[["x", "y"]].values.tolist()
            assert r.status == "ok"
        assert results[True] == results[False]


class DescribeMagnifications:
    def it_tiles_each_magnification_at_its_physical_resolution(self, tiled):
        index = index_of(tiled)
        assert set(index.magnification) == {"10x", "20x"}
        with TileStore(index[(index.magnification == "10x") & (index.status == "ok")].store.iloc[0]) as s:
            assert s.meta["target_mpp"] == 1.0 and s.meta["read_level"] == 2
            assert s.coords.size0.iloc[0] == 512.0  # 128 px at 1 µm/px = 512 level-0 px
            assert s[0].shape == (128, 128, 3)

    def it_skips_and_records_a_magnification_finer_than_the_scan(self, real_data, tmp_path):
        r = tile_unit(unit(real_data / "CMU-1-Small-Region.svs", "40x", 0.25, tmp=tmp_path),
                      TileParams(tile_size=256), None)
        assert r.status == "skipped-resolution" and "0.499" in r.error

    def it_reads_ome_tiff_through_tiffslide(self, real_data, tmp_path):
        u = unit(real_data / "OS-1-detail.ome.tif", "20x", 0.5, tmp=tmp_path)
        r = tile_unit(u, TileParams(tile_size=128), None)
        assert r.status == "ok" and r.kept > 0
        assert read_meta(u.store)["backend"] == "tiffslide"
        assert read_meta(u.store)["slide_mpp"] == pytest.approx(0.2271, abs=1e-4)


class DescribeBadInput:
    def it_fails_clearly_on_a_missing_mpp(self, real_data, tmp_path):
        r = tile_unit(unit(real_data / "tcga-cr-7395-01a-01-ts1.svs", tmp=tmp_path),
                      TileParams(tile_size=128), None)
        assert r.status == "failed" and "'mpp' column" in r.error

    def it_finds_no_tissue_on_an_almost_empty_slide(self, real_data, tmp_path):
        u = unit(real_data / "almost-empty-strip.tif", "10x", 1.0, mpp=0.5, tmp=tmp_path)
        r = tile_unit(u, TileParams(tile_size=256), None)
        assert r.status == "skipped-no-tissue" and r.kept == 0
        assert r.prefiltered > 0 and TileStore(u.store).meta["status"] == "skipped-no-tissue"

    @pytest.mark.parametrize("kind", ["truncated", "not-a-slide"])
    def it_records_a_broken_file_as_failed_without_a_store(self, real_data, tmp_path, kind):
        bad = tmp_path / "bad.svs"
        if kind == "truncated":
            data = (real_data / "CMU-1-Small-Region.svs").read_bytes()
            bad.write_bytes(data[: len(data) // 2])
        else:
            bad.write_text("not an image\n" * 100)
        u = unit(bad, tmp=tmp_path)
        r = tile_unit(u, TileParams(tile_size=128), None)
        assert r.status == "failed" and r.error
        assert not list(tmp_path.glob("*.tiles.zip")) and not list(tmp_path.glob(".*partial"))

    @pytest.mark.slow  # tiles the whole phantom
    def it_continues_the_cohort_when_one_slide_fails(self, phantom, tmp_path):
        study = tmp_path / "p"
        shutil.copytree(phantom, study)
        target = study / "slides" / "DEV-003_PASM.tiff"
        target.write_bytes(target.read_bytes()[:5000])
        report = tile_study(Study.load(study / "study.yaml", FAST + ["stains=[HE, PAS, PASM, MASSON]"]),
                            workers=1)
        failed = [(r.unit.patient_id, r.unit.stain) for r in report.failed]
        assert set(failed) == {("DEV-003", "PASM")}
        index = index_of(study)
        assert (index.status == "ok").sum() == len(index) - 2
        assert index[index.status == "failed"].error.str.len().min() > 10


class DescribeStore:
    def it_gives_random_access_to_tiles_with_coordinates(self, tiled):
        index = index_of(tiled)
        path = index[(index.status == "ok") & (index.magnification == "20x")].store.iloc[0]
        with TileStore(path) as store:
            assert len(store) == len(store.coords) > 3
            third = store[3]
            assert third.dtype == np.uint8 and third.shape == (128, 128, 3)
            assert {"x", "y", "size0", "background_fraction"} <= set(store.coords.columns)
            assert store.meta["settings"]["tile_size"] == 128
            assert store.meta["versions"]["lncr"]

    @pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "OS-1-detail.ome.tif"])
    def it_writes_the_same_store_whatever_the_threads(self, real_data, tmp_path, monkeypatch,
                                                       name):
        """Cells are read, normalised and encoded in threads (thread-safe readers at once,
        the others one region at a time); the store is the same, tile for tile."""
        from lncr.tiling import unit as tiling_unit
        from lncr.tiling.normalisers import make_normaliser

        slide = real_data / name
        with open_slide(slide) as s:
            reference = make_normaliser("vahadane").fit(s.read(0, 0, 0, 512, 512)).to_dict()
        stores = {}
        for threads in (1, 3):
            monkeypatch.setattr(tiling_unit, "TILE_THREADS", threads)
            u = unit(slide, mpp_target=0.5,
                     tmp=tmp_path / str(threads))
            assert tile_unit(u, TileParams(tile_size=128), reference).status == "ok"
            with TileStore(u.store) as store:
                stores[threads] = (store.coords.values.tolist(),
                                   [store.raw(i) for i in range(len(store))])
        assert len(stores[1][1]) > 10 and stores[1] == stores[3]

    def it_leaves_nothing_behind_when_writing_fails(self, tmp_path):
        path = tmp_path / "s.tiles.zip"
        with pytest.raises(RuntimeError):
            with TileStoreWriter(path, "png") as w:
                w.add(np.zeros((8, 8, 3), np.uint8), 0, 0, 8, 0.0)
                raise RuntimeError("killed")
        assert list(tmp_path.iterdir()) == []

    def it_is_a_plain_zip_archive(self, tiled):
        index = index_of(tiled)
        path = index[index.status == "ok"].store.iloc[0]
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        assert "meta.json" in names and "tiles.csv" in names and names[0].endswith(".png")

    def it_exports_the_original_folder_layout(self, tiled, tmp_path):
        n = export_tiles(Study.load(tiled / "study.yaml", FAST), tmp_path)
        index = index_of(tiled)
        assert n == index[index.status == "ok"].kept.sum()
        files = list((tmp_path / "DEV-001" / "HE" / "20x").glob("*_*.png"))
        assert len(files) == index[(index.patient_id == "DEV-001") & (index.stain == "HE")
                                   & (index.magnification == "20x")].kept.iloc[0]


@pytest.mark.slow  # kills and resumes tiling
class DescribeResume:
    def it_reuses_finished_stores_and_retiles_when_a_setting_changes(self, tiled, tmp_path):
        study = tmp_path / "p"
        shutil.copytree(tiled, study)
        stores = sorted((study / "lncr-output" / "tiles").rglob("*.tiles.zip"))
        before = {p: p.stat().st_mtime_ns for p in stores}
        thumbs = sorted((study / "lncr-output" / "tiles" / "qc").glob("*.png"))
        drawn = {p: p.stat().st_mtime_ns for p in thumbs}
        again = tile_study(Study.load(study / "study.yaml", FAST), workers=1)
        assert {r.status for r in again.results} == {"reused"}
        assert {p: p.stat().st_mtime_ns for p in stores} == before
        assert thumbs and {p: p.stat().st_mtime_ns for p in thumbs} == drawn  # not redrawn
        changed = tile_study(Study.load(study / "study.yaml", FAST + ["tiling.background_threshold=215"]),
                             workers=1)
        assert {r.status for r in changed.results} <= {"ok", "skipped-no-tissue"}
        assert all(p.stat().st_mtime_ns != drawn[p] for p in thumbs)  # new tiles: redrawn

    def it_survives_being_killed_mid_run(self, phantom, tmp_path):
        study = tmp_path / "p"
        shutil.copytree(phantom, study)
        cmd = [sys.executable, "-m", "lncr.cli", "tile", str(study / "study.yaml"), "--workers", "1"]
        cmd += [arg for setting in FAST for arg in ("--set", setting)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tiles = study / "lncr-output" / "tiles"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(tiles.rglob("*.tiles.zip"))) < 3:
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        finished = sorted(tiles.rglob("*.tiles.zip"))
        assert 3 <= len(finished) < 64, "kill the run in the middle"
        for path in finished:  # every store that exists is complete
            assert read_meta(path)["status"] in ("ok", "skipped-no-tissue")
        mtimes = {p: p.stat().st_mtime_ns for p in finished}
        report = tile_study(Study.load(study / "study.yaml", FAST), workers=2)
        assert not report.failed and len(report.results) == 64
        reused = {r.unit.store for r in report.results if r.status == "reused"}
        assert {str(p) for p in finished} <= reused
        assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
        assert not list(tiles.rglob("*.partial"))


SHARDED = FAST + ["magnification.powers=[10]"]


def half_phantom(phantom, folder):
    """A copy of the phantom with its HE and PAS slides only (16 slides)."""
    shutil.copytree(phantom, folder)
    slides = pd.read_csv(folder / "slides.csv", dtype=str)
    slides[slides.stain.isin(["HE", "PAS"])].to_csv(folder / "slides.csv", index=False)
    return folder


class DescribeShards:
    def it_gives_each_slide_to_one_shard_with_all_its_magnifications(self):
        from lncr.sharding import Shard

        units = [TileUnit(p, "development", st, "s", None, m, 1.0, "x")
                 for p in ("A", "B", "C") for st in ("HE", "PAS") for m in ("10x", "20x")]
        parts = [Shard(i, 4).select(units, lambda u: (u.patient_id, u.stain)) for i in range(4)]
        assert sorted(map(id, [u for part in parts for u in part])) == sorted(map(id, units))
        for part in parts:
            slides = {(u.patient_id, u.stain) for u in part}
            assert len(part) == 2 * len(slides)
        with pytest.raises(Exception, match="0 ≤ i < N"):
            Shard.parse("2/2")

    @pytest.mark.slow  # two lncr processes
    def it_tiles_in_shards_side_by_side_and_the_last_merges_the_index(self, phantom, tiled,
                                                                       tmp_path):
        study = half_phantom(phantom, tmp_path / "p")
        base = [sys.executable, "-m", "lncr.cli", "tile", str(study / "study.yaml"),
                "--workers", "1", *[a for s in SHARDED for a in ("--set", s)]]
        procs = [subprocess.Popen(base + ["--shard", f"{i}/2"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert any("index merged" in out for out in outputs), outputs
        # Plain progress lines (not a terminal): a timestamp, the count and the ETA.
        assert re.search(r"\d\d:\d\d:\d\d \S+ (HE|PAS) 10x ok .*: 8/8 slide × magnification "
                         r"units \(.*ETA", outputs[0]), outputs[0]
        index = index_of(study).set_index(["patient_id", "stain", "magnification"])
        whole = index_of(tiled).set_index(["patient_id", "stain", "magnification"])
        whole = whole.loc[index.index]
        assert len(index) == 16 and (index.status == whole.status).all()
        assert (index.kept == whole.kept).all() and (index.grid_cells == whole.grid_cells).all()
        record = json.loads((study / "lncr-output" / "tiles" / "run.json").read_text())
        assert record["shards"] == 2 and record["units"] == 16
        summary = pd.read_csv(study / "lncr-output" / "tiles" / "summary.csv")
        assert summary.tiles.sum() == index.kept.sum()

    def it_refuses_to_merge_before_every_shard_has_finished(self, phantom, tmp_path):
        from typer.testing import CliRunner

        from lncr.cli import app

        study = half_phantom(phantom, tmp_path / "p")
        sets = [a for s in SHARDED for a in ("--set", s)]
        first = CliRunner().invoke(app, ["tile", str(study / "study.yaml"), "--shard", "0/3",
                                         "--workers", "1", *sets])
        assert first.exit_code == 0 and "index not merged yet" in first.output
        assert not (study / "lncr-output" / "tiles" / "index.csv").exists()
        merge = CliRunner().invoke(app, ["tile", str(study / "study.yaml"), "--merge", *sets])
        assert merge.exit_code == 2 and "shard(s) 1/3, 2/3 have not finished" in merge.output
        assert "Traceback" not in merge.output
        whole = tile_study(Study.load(study / "study.yaml", SHARDED), workers=2)
        reused = {r.unit.patient_id for r in whole.results if r.status == "reused"}
        assert reused and not list((study / "lncr-output" / "tiles" / "shards").glob("*.csv"))


class DescribeReferences:
    def it_fits_references_on_development_tiles_only(self, tiled):
        import json

        for stain in ("HE", "PAS", "PASM", "MASSON"):
            record = json.loads((tiled / "lncr-output" / "tiles" / "norm" / f"{stain}.json").read_text())
            patients = {u["patient_id"] for u in record["tiles_used"]}
            assert patients and all(p.startswith("DEV-") for p in patients)
            assert record["reference"]["method"] == record["spec"]["method"]

    def it_writes_qc_thumbnails_and_a_summary(self, tiled):
        tiles = tiled / "lncr-output" / "tiles"
        assert len(list((tiles / "qc").glob("*.png"))) == 32
        summary = pd.read_csv(tiles / "summary.csv")
        assert set(summary.cohort) == {"development", "external"} and summary.tiles.sum() > 0


class DescribeRealStudy:
    def it_tiles_a_study_of_the_real_files(self, make_study, real_data):
        rows = [("CMU", "development", "1"), ("OME", "development", "0"),
                ("KID", "development", "1"), ("TCGA", "development", "0")]
        slides = [("CMU", "HE", str(real_data / "CMU-1-Small-Region.svs"), ""),
                  ("OME", "HE", str(real_data / "OS-1-detail.ome.tif"), ""),
                  ("KID", "HE", str(real_data / "almost-empty-strip.tif"), "0.5"),
                  ("TCGA", "HE", str(real_data / "tcga-cr-7395-01a-01-ts1.svs"), "")]
        study = make_study(rows, slides=slides, slide_header="patient_id,stain,path,mpp",
                           stains=("HE",))
        report = tile_study(Study.load(study, ["tiling.tile_size=256"]), workers=2)
        status = {(r.unit.patient_id, r.unit.magnification): r.status for r in report.results}
        assert status[("CMU", "20x")] == "ok" and status[("CMU", "10x")] == "ok"
        assert status[("CMU", "40x")] == "skipped-resolution"
        assert status[("OME", "40x")] == "ok"  # 0.2271 µm/px is finer than 40x
        assert all(status[("KID", m)] in ("skipped-no-tissue", "skipped-resolution")
                   for m in ("10x", "20x", "40x"))
        assert {status[("TCGA", m)] for m in ("10x", "20x", "40x")} == {"failed"}
        assert "'mpp' column" in report.failed[0].error
