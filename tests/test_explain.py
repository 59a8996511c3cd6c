"""Describe the tile scores behind a prediction: attention within the bag, leave-one-out
effects, influential tiles, the heatmap and the GeoJSON export (`lncr explain heatmap`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import FAST, validated_copy
from lncr.cli import app
from lncr.data.entries import study_entries
from lncr.explain.heatmap import geojson
from lncr.explain.scores import influential, leave_one_out, slide_scores
from lncr.models.mil import build_mil
from lncr.study.validate import Study
from lncr.training.loop import RunSpec
from lncr.training.predict import load_run, predict_run
from lncr.training.trainer import train_run

QUICK = FAST + ["training.pretrained=false", "training.epochs=1", "training.warmup_epochs=0",
                "training.input_size=256", "training.embedding_dim=16",
                "training.transformer_heads=2", "training.feedforward_dim=16",
                "training.eval_tiles=16", "training.loader_workers=0"]


class DescribeLeaveOneOut:
    def it_gives_each_tile_the_probability_change_its_removal_causes(self):
        torch.manual_seed(0)
        model = build_mil("resnet18", 8, 1, 2, None, 8, 0.0).eval()
        emb = torch.randn(5, 8)
        probability, attention, effect = leave_one_out(model, emb)
        assert attention.sum() == pytest.approx(1.0, abs=1e-6) and len(effect) == 5
        with torch.no_grad():
            full = torch.sigmoid(model.head(emb[None])[0])[0]
            without_2 = torch.sigmoid(model.head(emb[[0, 1, 3, 4]][None])[0])[0]
        assert probability == pytest.approx(float(full), abs=1e-6)
        assert effect[2] == pytest.approx(float(full - without_2), abs=1e-6)


class DescribeInfluentialTiles:
    def it_ranks_by_relative_attention_then_by_absolute_effect(self):
        scores = pd.DataFrame({"index": [0, 1, 2, 3], "relative_attention": [1.2, 0.5, 1.2, 2.0],
                               "effect": [0.01, 0.3, -0.2, 0.0]})
        assert list(influential(scores, 3)["index"]) == [3, 2, 0]


    def it_picks_the_evidence_for_the_explained_outcome_by_the_signed_effect(self):
        scores = pd.DataFrame({"index": [0, 1, 2, 3], "relative_attention": [1.2, 0.5, 1.2, 2.0],
                               "effect": [0.01, 0.3, -0.2, 0.0]})
        assert list(influential(scores, 2, "effect", 1)["index"]) == [1, 0]
        assert list(influential(scores, 2, "effect", 0)["index"]) == [2, 3]
        top = influential(scores, 2, "attention_effect", 0)
        assert list(top["index"]) == [2, 3] and top.influence.iloc[0] == pytest.approx(0.24)

    def it_refuses_an_unknown_rule(self):
        scores = pd.DataFrame({"index": [0], "relative_attention": [1.0], "effect": [0.0]})
        with pytest.raises(ValueError, match="explain.influence"):
            influential(scores, 1, "gradient", 1)


class DescribeGeoJSON:
    def it_writes_one_closed_square_detection_per_tile_with_its_scores(self):
        scores = pd.DataFrame({"index": [4], "x": [1024], "y": [512], "size0": [256.0],
                               "attention": [0.2], "relative_attention": [1.6],
                               "effect": [-0.05], "chunk_probability": [0.7]})
        doc = json.loads(json.dumps(geojson(scores, "P1 HE 20x")))
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
        f = doc["features"][0]
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        assert ring[2] == [1280.0, 768.0]
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["measurements"]["effect"] == -0.05


@pytest.fixture(scope="module")
def trained(tiled, tmp_path_factory):
    study = validated_copy(tiled, tmp_path_factory.mktemp("explain") / "study")
    loaded = Study.load(study, QUICK)
    cfg, entries = loaded.config, study_entries(loaded, "HE", "20x")
    folder = train_run(RunSpec("HE", "20x", "resnet18", 4, 0), entries, cfg.training,
                       cfg.output_dir / "runs", cfg.tiling.tile_size,
                       source={"study": str(study), "overrides": QUICK})
    return study, folder, entries


class DescribeSlideScores:
    def it_scores_every_tile_and_agrees_with_lncr_predict_over_every_tile(self, trained):
        study, folder, entries = trained
        model, config, inputs, _ = load_run(folder, "last")
        entry = entries[0]
        scores, probability = slide_scores(model, inputs, entry, config["geometry"]["crop"], 16)
        assert len(scores) == entry.n_tiles and list(scores["index"]) == list(range(entry.n_tiles))
        assert scores.groupby("chunk").attention.sum().to_numpy() == pytest.approx(1.0, abs=1e-5)
        assert np.isfinite(scores.effect).all() and (scores.size0 > 0).all()
        predicted = predict_run(folder, "all", "last", tiles="all", chunk_size=16, write=False)
        row = predicted[predicted.patient_id == entry.patient_id].iloc[0]
        assert probability == pytest.approx(row.probability, abs=1e-5)


@pytest.fixture(scope="module")
def final_study(trained):
    """The trained run registered as the study's only final model (HE 20x)."""
    study, folder, entries = trained
    out = study.parent / "lncr-output"
    (out / "final").mkdir(exist_ok=True)
    pd.DataFrame([{"stain": "HE", "magnification": "20x", "architecture": "resnet18",
                   "bag_size": 4, "seed": 0, "status": "done", "val_auc": 0.5,
                   "folder": str(folder), "error": ""}]).to_csv(
        out / "final" / "models.csv", index=False)
    return study, folder, entries, out


class DescribeHeatmapCommand:
    def it_writes_scores_heatmaps_geojson_and_influential_tiles(self, final_study):
        study, folder, entries, out = final_study
        sets = [a for s in QUICK + ["explain.top_k=3"] for a in ("--set", s)]
        result = CliRunner().invoke(app, ["explain", "heatmap", str(study), "--cohort",
                                          "external", "--device", "cpu"] + sets)
        assert result.exit_code == 0, result.output
        ext = [e for e in entries if e.split == "external"]
        for e in ext:  # one plain progress line per slide
            assert f"scored and mapped HE 20x {e.patient_id} (" in result.output
        assert f"({len(ext)} slide × magnification units, " in result.output
        top = pd.read_csv(out / "explain" / "influential.csv", dtype={"patient_id": str})
        assert set(top.patient_id) == {e.patient_id for e in ext}
        assert (top.groupby("patient_id").size() == 3).all() and set(top["rank"]) == {1, 2, 3}
        for e in ext:
            stem = f"HE/20x/{e.patient_id}"
            scores = pd.read_csv(out / "explain" / "scores" / f"{stem}.csv")
            assert len(scores) == e.n_tiles
            doc = json.loads((out / "explain" / "geojson" / f"{stem}.geojson").read_text())
            assert len(doc["features"]) == e.n_tiles
            names = [f["properties"]["classification"]["name"] for f in doc["features"]]
            influential = [n for n in names if n.startswith("lncr influential (")]
            assert len(influential) == 3 and names.count("lncr tile") == e.n_tiles - 3
            ranked = top[top.patient_id == e.patient_id]["index"]
            assert {int(f["properties"]["name"].rsplit(" ", 1)[1]) for f in doc["features"]
                    if f["properties"]["classification"]["name"] != "lncr tile"} == set(ranked)
            with Image.open(out / "explain" / "heatmaps" / f"{stem}.png") as im:
                assert im.size[0] > 400
        assert json.loads((out / "explain" / "explain.json").read_text())["top_k"] == 3
        index = pd.read_csv(out / "explain" / "geojson" / "index.tsv", sep="\t",
                            dtype={"patient_id": str})
        assert sorted(index.patient_id) == sorted(e.patient_id for e in ext)
        assert all((out / "explain" / "geojson" / g).exists() for g in index.geojson)
        assert index.image.str.endswith(".tiff").all()  # the slide file QuPath opens


class DescribeHeatmapShards:
    def it_splits_the_patients_over_shards_and_the_last_writes_the_tables(self, final_study,
                                                                          tmp_path):
        study, folder, entries, out = final_study
        copy = tmp_path / "study"
        shutil.copytree(study.parent, copy, ignore=shutil.ignore_patterns("explain"))
        sets = [a for s in QUICK + ["explain.top_k=2"] for a in ("--set", s)]
        base = ["explain", "heatmap", str(copy / "study.yaml"), "--cohort", "development",
                "--device", "cpu", *sets]
        first = CliRunner().invoke(app, base + ["--shard", "0/2"])
        second = CliRunner().invoke(app, base + ["--shard", "1/2"])
        assert first.exit_code == second.exit_code == 0, first.output + second.output
        assert "the tables wait for the other shards" in " ".join(first.output.split())
        assert "influential.csv and the GeoJSON index written" in " ".join(second.output.split())
        explain = copy / "lncr-output" / "explain"
        dev = sorted(e.patient_id for e in entries if e.split != "external")
        sharded = pd.read_csv(explain / "influential.csv", dtype={"patient_id": str})
        assert sorted(sharded.patient_id.unique()) == dev
        scores = {p: p.stat().st_mtime_ns for p in (explain / "scores").rglob("*.csv")}
        assert len(scores) == len(dev)
        whole = CliRunner().invoke(app, base)  # every slide cached: nothing is scored again
        assert whole.exit_code == 0, whole.output
        assert {p: p.stat().st_mtime_ns for p in scores} == scores
        pd.testing.assert_frame_equal(
            sharded, pd.read_csv(explain / "influential.csv", dtype={"patient_id": str}))


class DescribeGradCAMCommand:
    def it_explains_each_influential_tile_inside_its_bag(self, final_study):
        study, folder, entries, out = final_study
        ext = sorted(e.patient_id for e in entries if e.split == "external")
        sets = [a for s in QUICK + ["explain.top_k=3"] for a in ("--set", s)]
        args = ["explain", "gradcam", str(study), "--device", "cpu", "--target", "cr"]
        result = CliRunner().invoke(app, args + [a for p in ext for a in ("--patient", p)]
                                    + sets)
        assert result.exit_code == 0, result.output
        assert all(f"Grad-CAM of HE 20x {p} (" in result.output for p in ext)
        table = pd.read_csv(out / "explain" / "gradcam" / "gradcam.csv", dtype={"patient_id": str})
        assert sorted(table.patient_id.unique()) == ext and (table.target == "CR").all()
        for patient in ext:
            slide = out / "explain" / "gradcam" / "HE" / "20x" / patient
            cams = np.load(slide / "cams.npy")
            rows = pd.read_csv(slide / "cams.csv")
            scores = pd.read_csv(out / "explain" / "scores" / "HE" / "20x" / f"{patient}.csv")
            assert cams.shape[0] == len(rows) == 3 and cams.min() >= 0 and cams.max() <= 1
            assert list(rows["index"]) == list(influential(scores, 3, "effect", 1)["index"])
            # the bag Grad-CAM ran is the chunk the tile was scored in: same probability
            chunk_p = scores.set_index("index").chunk_probability.loc[rows["index"]]
            assert rows.bag_probability.to_numpy() == pytest.approx(chunk_p.to_numpy(), abs=1e-5)
            inside = ((rows.peak_x >= rows.x) & (rows.peak_x <= rows.x + rows.size0)
                      & (rows.peak_y >= rows.y) & (rows.peak_y <= rows.y + rows.size0))
            flat = cams.max(axis=(1, 2)) == cams.min(axis=(1, 2))
            assert (inside | flat).all() and (rows.peak_x.isna() == flat).all()
            with Image.open(slide / rows.png.iloc[0]) as im:  # tile | overlay
                assert im.size[0] == 2 * im.size[1]
            assert (slide / "gallery.png").stat().st_size > 0
        meta = json.loads((out / "explain" / "gradcam" / "gradcam.json").read_text())
        assert meta["models"][0]["layer"] == "layer4" and meta["models"][0]["method"] == "gradcam"

    def it_explains_every_training_patient_with_the_authors_choice(self, final_study):
        study, folder, entries, out = final_study
        train = sorted(e.patient_id for e in entries if e.split == "train")
        sets = [a for s in QUICK + ["explain.top_k=1", "explain.cam_patients=train"]
                for a in ("--set", s)]
        result = CliRunner().invoke(app, ["explain", "gradcam", str(study), "--device", "cpu"]
                                    + sets)
        assert result.exit_code == 0, result.output
        table = pd.read_csv(out / "explain" / "gradcam" / "gradcam.csv", dtype={"patient_id": str})
        assert sorted(table.patient_id.unique()) == train and (table.split == "train").all()
        meta = json.loads((out / "explain" / "gradcam" / "gradcam.json").read_text())
        assert meta["chosen"] is None and sorted(meta["patients"]) == train

    def it_recomputes_maps_for_another_method_or_a_retrained_model(self, final_study):
        study, folder, entries, out = final_study
        patient = sorted(e.patient_id for e in entries if e.split == "external")[0]
        sets = [a for s in QUICK + ["explain.top_k=3"] for a in ("--set", s)]
        args = ["explain", "gradcam", str(study), "--device", "cpu", "--target", "cr",
                "--patient", patient] + sets
        slide = out / "explain" / "gradcam" / "HE" / "20x" / patient
        scores_csv = out / "explain" / "scores" / "HE" / "20x" / f"{patient}.csv"

        def run(*extra: str) -> tuple[np.ndarray, str]:
            result = CliRunner().invoke(app, args + list(extra))
            assert result.exit_code == 0, result.output
            meta = json.loads((out / "explain" / "gradcam" / "gradcam.json").read_text())
            return np.load(slide / "cams.npy"), meta["models"][0]["method"]

        first, method = run("--method", "gradcam")
        again, _ = run("--method", "gradcam")
        assert method == "gradcam" and np.array_equal(first, again)  # reused: same key
        other, method = run("--method", "layercam")
        assert method == "layercam" and not np.allclose(first, other)
        checkpoint = folder / "last.pt"
        original = checkpoint.read_bytes()
        try:  # "retrain": other weights in the same run folder
            state = torch.load(checkpoint, weights_only=True)
            state["model"]["classifier.weight"] *= -1.0  # CR evidence becomes non-CR's
            state["model"]["attention.weight"] += 0.3
            torch.save(state, checkpoint)
            before = pd.read_csv(scores_csv)
            retrained, _ = run("--method", "layercam")
            after = pd.read_csv(scores_csv)
            assert not np.allclose(before.chunk_probability, after.chunk_probability)
            assert np.isfinite(retrained).all() and not np.allclose(retrained, other)
        finally:
            checkpoint.write_bytes(original)

    def it_picks_the_most_confident_correct_and_incorrect_patients_by_default(self, tmp_path):
        from lncr.explain.gradcam_run import default_patients

        (tmp_path / "predictions").mkdir()
        pd.DataFrame({"patient_id": ["a", "b", "c", "d", "e", "f"],
                      "split": ["val", "val", "val", "external", "external", "train"],
                      "label": [1, 0, 1, 0, 1, 1],
                      "probability": [0.9, 0.6, 0.7, 0.1, 0.45, 0.99]}).to_csv(
            tmp_path / "predictions" / "multi_stain.csv", index=False)
        patients, why = default_patients(tmp_path)
        assert patients == ["a", "b", "d", "e"]  # train patient f is never chosen
        assert list(why.why) == ["most confident correct", "most confident incorrect"] * 2


class DescribeClusterCommand:
    def it_clusters_development_influential_tiles_and_tests_outcome_association(
            self, final_study):
        study, folder, entries, out = final_study
        sets = [a for s in QUICK + ["explain.top_k=4", "explain.clusters=3",
                                    "explain.style_dim=4", "explain.cluster_tile_size=32",
                                    "explain.cluster_epochs=2"] for a in ("--set", s)]
        result = CliRunner().invoke(app, ["explain", "cluster", str(study), "--device", "cpu"]
                                    + sets)
        assert result.exit_code == 0, result.output
        folder = out / "explain" / "clusters" / "HE" / "20x"
        tiles = pd.read_csv(folder / "tiles.csv", dtype={"patient_id": str})
        dev = {e.patient_id for e in entries if e.split in ("train", "val")}
        assert set(tiles.patient_id) == dev  # external patients never enter
        assert tiles.cluster.between(0, 2).all() and {"tsne_x", "planted_class"} <= set(tiles)
        assoc = pd.read_csv(folder / "association.csv")
        assert list(assoc.cluster) == [0, 1, 2] and assoc.tiles.sum() == len(tiles)
        for name in ("tsne-cluster.png", "tsne-outcome.png", "galleries.png",
                     "association.png", "dccs.pt", "history.csv"):
            assert (folder / name).stat().st_size > 0
        meta = json.loads((folder / "cluster.json").read_text())
        assert meta["dccs"]["clusters"] == 3 and "accuracy" in meta["phantom"]["dccs"]
        again = CliRunner().invoke(app, ["explain", "cluster", str(study), "--device", "cpu"]
                                   + sets)
        assert "already done" in again.output
