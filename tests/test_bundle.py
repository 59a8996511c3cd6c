"""Describe the model bundle: `lncr export` writes a study's final ensemble to one verified
file, and `lncr apply` scores new patients with it exactly as `lncr predict` scored the study."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST, browser_page, validated_copy
from lncr.bundle.apply import apply_bundle
from lncr.bundle.archive import BundleError, open_bundle
from lncr.bundle.export import export_bundle
from lncr.cli import app
from lncr.errors import BadInput
from lncr.layout import read_table
from lncr.models.backbones import build_backbone
from lncr.study.validate import Study

pytestmark = pytest.mark.slow  # trains final models

#: Frozen ResNet-18 (a local weights file) on cached features, HE and PAS, one epoch.
SETS = FAST + ["training.architecture=resnet18", "training.backbone_lr_factor=0",
               "training.channel_stats=imagenet", "training.embedding_dim=32",
               "training.transformer_heads=4", "training.feedforward_dim=64",
               "training.epochs=1", "training.warmup_epochs=0", "training.eval_tiles=8",
               "training.input_size=256", "training.loader_workers=0",
               "sweep.backbone=frozen", "sweep.architectures=[resnet18]", "sweep.bag_sizes=[4]",
               "sweep.repeats=1", "sweep.stains=[HE, PAS]", "sweep.magnifications=[10x]",
               "evaluation.tiles=all", "evaluation.bootstrap_resamples=200",
               "explain.top_k=3"]


@pytest.fixture(scope="module")
def exported(tiled, tmp_path_factory):
    """A trained, predicted and evaluated phantom study and its bundle:
    (study file, bundle path, the patients table, the settings, the removed weights file)."""
    from lncr.evaluation.evaluate import evaluate_study
    from lncr.evaluation.final_predictions import predict_final
    from lncr.sweep.run import run_sweep

    folder = tmp_path_factory.mktemp("bundle")
    study_yaml = validated_copy(tiled, folder / "study")
    weights = folder / "resnet18.pth"
    torch.manual_seed(5)
    torch.save(build_backbone("resnet18", 8).model.state_dict(), weights)
    sets = SETS + [f"sweep.weights={{resnet18: '{weights}'}}"]
    run_sweep(Study.load(study_yaml, sets), executor="local", workers=1, device="cpu")
    predict_final(Study.load(study_yaml, sets), device="cpu")
    evaluate_study(Study.load(study_yaml, sets), figures=False)
    bundle = export_bundle(Study.load(study_yaml, sets), folder / "phantom.lncr")
    weights.unlink()  # the bundle must carry the backbone itself
    patients = pd.read_csv(study_yaml.parent / "patients.csv", dtype=str)
    return study_yaml, bundle, patients, sets, weights


def with_manifest(bundle: Path, out: Path, change) -> Path:
    """A copy of ``bundle`` whose manifest ``change(manifest)`` edited in place (the manifest
    itself is not checksummed: the parts are)."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "manifest.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    return out


def external_slides(study_yaml, patients, stains=("HE", "PAS")) -> pd.DataFrame:
    slides = pd.read_csv(study_yaml.parent / "slides.csv", dtype=str)
    ext = set(patients[patients.cohort == "external"].patient_id)
    slides = slides[slides.patient_id.isin(ext) & slides.stain.isin(stains)].copy()
    slides["path"] = [str((study_yaml.parent / p).resolve()) for p in slides.path]
    return slides


@pytest.fixture(scope="module")
def applied(exported, tmp_path_factory):
    """The bundle applied to the study's external slides, from another folder."""
    study_yaml, bundle, patients, _, _ = exported
    out = tmp_path_factory.mktemp("elsewhere") / "scores"
    return apply_bundle(bundle, external_slides(study_yaml, patients), out, device="cpu")


class DescribeApply:
    def it_reproduces_the_studys_predictions_for_every_model_and_ensemble(self, exported,
                                                                         applied):
        study_yaml, _, _, _, _ = exported
        out = study_yaml.parent / "lncr-output" / "predictions"
        keys = {"single_models": ["patient_id", "stain", "magnification"],
                "stain_ensembles": ["patient_id", "stain"], "multi_stain": ["patient_id"]}
        mine = {"single_models": applied.single, "stain_ensembles": applied.stains,
                "multi_stain": applied.scores.rename(columns={"p_cr": "probability"})}
        for kind, key in keys.items():
            theirs = read_table(out / f"{kind}.csv")
            theirs = theirs[theirs.cohort == "external"]
            both = theirs.merge(mine[kind], on=key, suffixes=("", "_applied"))
            assert len(both) == len(theirs) > 0, kind
            assert (both.probability - both.probability_applied).abs().max() <= 1e-6, kind

    def it_applies_the_development_threshold_to_give_the_same_classes(self, exported, applied):
        study_yaml, _, _, _, _ = exported
        out = study_yaml.parent / "lncr-output"
        metrics = read_table(out / "evaluation" / "metrics.csv")
        t = metrics[(metrics.cohort == "validation") & (metrics.model == "multi-stain")]
        threshold = float(t.threshold.iloc[0])
        multi = read_table(out / "predictions" / "multi_stain.csv")
        multi = multi[multi.cohort == "external"].set_index("patient_id")
        scores = applied.scores.set_index("patient_id")
        assert (scores.threshold == threshold).all()
        expected = ["CR" if p >= threshold else "non-CR" for p in multi.probability]
        assert list(scores.loc[multi.index].predicted) == expected

    def it_writes_the_scores_and_a_report_per_patient(self, applied):
        record = json.loads((applied.folder / "scores.json").read_text())
        assert record["bundle"]["sha256"] == applied.bundle.sha256
        assert {"sensitivity", "specificity"} <= set(
            record["threshold"]["cohorts"]["validation"])
        for pid, path in applied.reports.items():
            page = path.read_text()
            assert pid in page and "Research use only" in page and 'src="http' not in page
            assert page.count("<img") >= 2  # a heatmap and influential tiles

    def it_renders_the_patient_report_in_a_browser_without_errors(self, applied, tmp_path):
        pid, path = next(iter(applied.reports.items()))
        with browser_page(path, width=794) as (page, errors):  # A4 at 96 dpi
            images = page.evaluate("Array.from(document.images).map(i => "
                                   "[i.complete, i.naturalWidth])")
            text = page.locator("body").inner_text()
            pdf = page.pdf(format="A4")  # print layout
        assert not errors and images and all(done and w > 0 for done, w in images)
        assert "P(complete response at 12 months)" in text and pid in text
        pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
        assert pdf.startswith(b"%PDF") and pages == 1, pages  # one printed page

    def it_is_a_study_that_evaluate_and_report_describe_without_an_error(self, applied):
        study_yaml = applied.folder / "study.yaml"
        cli = CliRunner().invoke(app, ["evaluate", str(study_yaml)])
        assert cli.exit_code == 0, cli.output
        assert "Nothing to evaluate: every one of the" in cli.output
        record = json.loads((applied.folder / "lncr-output" / "evaluation" /
                             "evaluation.json").read_text())
        assert "prospective" in record["nothing_to_evaluate"] and record["metrics"] == []
        cli = CliRunner().invoke(app, ["report", str(study_yaml)])
        assert cli.exit_code == 0, cli.output
        page = (applied.folder / "lncr-output" / "report" / "report.html").read_text()
        results = page[page.index('id="results"'):page.index('id="explain"')]
        assert "Nothing to evaluate" in results
        for pid, p_cr in zip(applied.scores.patient_id, applied.scores.p_cr):
            assert pid in results and f"{p_cr:.3f}" in results

    def it_scores_a_patient_missing_a_stain_from_the_others_and_says_so(self, exported,
                                                                      tmp_path):
        study_yaml, bundle, patients, _, _ = exported
        slides = external_slides(study_yaml, patients, stains=("HE",)).head(1)
        result = apply_bundle(bundle, slides, tmp_path / "one", device="cpu", heatmaps=False)
        row = result.scores.iloc[0]
        assert row.stains_used == "HE" and "PAS" in row.stains_missing.split("+")
        assert row.p_cr == pytest.approx(row.p_HE)
        page = result.reports[row.patient_id].read_text()
        assert "missing: PAS" in page

    def it_reports_an_unreadable_slide_and_scores_the_rest(self, exported, tmp_path):
        study_yaml, bundle, patients, _, _ = exported
        slides = external_slides(study_yaml, patients)
        broken = tmp_path / "broken.svs"
        broken.write_bytes(b"not a slide" * 100)
        first, second = sorted(slides.patient_id.unique())[:2]
        slides.loc[(slides.patient_id == first) & (slides.stain == "PAS"), "path"] = str(broken)
        slides["mpp"] = ""
        slides.loc[(slides.patient_id == second) & (slides.stain == "PAS"), "mpp"] = "7"
        result = apply_bundle(bundle, slides, tmp_path / "out", device="cpu", heatmaps=False)
        refused = result.refused.set_index("patient_id")
        assert list(refused.index) == [first, second] and set(refused.stain) == {"PAS"}
        assert "cannot be read" in refused.reason[first]
        assert "implausible" in refused.reason[second]
        assert result.scores.p_cr.notna().all() and len(result.scores) == slides.patient_id.nunique()
        assert "refused" in result.reports[first].read_text()


    def it_tiles_inside_a_new_slides_annotations_and_refuses_a_missing_file(self, exported,
                                                                           tmp_path):
        from lncr.layout import Layout

        study_yaml, bundle, patients, _, _ = exported
        slides = external_slides(study_yaml, patients)
        pid = sorted(slides.patient_id.unique())[0]
        slides = slides[slides.patient_id == pid].copy()
        region = tmp_path / "pas.geojson"  # the left half of the slide, drawn in QuPath
        region.write_text(json.dumps([{"type": "Feature", "properties": {
            "objectType": "annotation"}, "geometry": {"type": "Polygon", "coordinates": [
                [[0, 0], [2000, 0], [2000, 20000], [0, 20000], [0, 0]]]}}]))
        slides["annotations"] = ["nowhere.geojson" if s == "HE" else "pas.geojson"
                                 for s in slides.stain]
        slides["path"] = [str(p) for p in slides.path]
        slides.to_csv(tmp_path / "slides.csv", index=False)
        from lncr.bundle.apply import read_slide_table

        result = apply_bundle(bundle, read_slide_table(tmp_path / "slides.csv"),
                              tmp_path / "out", device="cpu", heatmaps=False)
        refused = result.refused.set_index("stain")
        assert list(refused.index) == ["HE"] and "nowhere.geojson" in refused.reason["HE"]
        assert result.scores.stains_used.iloc[0] == "PAS"
        index = Layout(tmp_path / "out" / "lncr-output").read_tiles_index()
        assert (index.annotations == str(region)).all() and (index.outside_regions > 0).all()


class DescribeBundleFile:
    def it_refuses_a_bundle_with_one_flipped_byte(self, exported, tmp_path):
        _, bundle, _, _, _ = exported
        data = bytearray(bundle.read_bytes())
        with zipfile.ZipFile(bundle) as zf:
            info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("model.safetensors")))
        data[info.header_offset + 30 + len(info.filename) + 100] ^= 0x01  # inside the weights
        bad = tmp_path / "flipped.lncr"
        bad.write_bytes(bytes(data))
        with pytest.raises(BundleError, match="damaged|altered"):
            open_bundle(bad)

    def it_refuses_a_truncated_bundle_and_another_format_version(self, exported, tmp_path):
        _, bundle, _, _, _ = exported
        cut = tmp_path / "cut.lncr"
        cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
        with pytest.raises(BundleError, match="truncated|damaged"):
            open_bundle(cut)
        newer = with_manifest(bundle, tmp_path / "newer.lncr",
                              lambda m: m.update(format_version=99, lncr_version="9.0"))
        with pytest.raises(BundleError, match="lncr 9.0 in bundle format 99.*format 1 only"):
            open_bundle(newer)

    def it_refuses_weights_of_another_architecture_before_reading_a_slide(self, exported,
                                                                         tmp_path):
        from safetensors.torch import load, save

        from lncr.bundle.archive import sha256_bytes

        study_yaml, bundle, patients, _, _ = exported
        swapped = tmp_path / "swapped.lncr"
        with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(swapped, "w") as dst:
            manifest = json.loads(src.read("manifest.json"))
            target = next(n for n in src.namelist() if n.endswith("model.safetensors"))
            state = load(src.read(target))
            state = {k: torch.zeros(tuple(d + 1 for d in v.shape)) for k, v in state.items()}
            data = save(state)  # another width: the head of another architecture
            manifest["parts"][target] = {"bytes": len(data), "sha256": sha256_bytes(data)}
            for item in src.infolist():
                if item.filename == "manifest.json":
                    continue
                dst.writestr(item, data if item.filename == target else src.read(item))
            dst.writestr("manifest.json", json.dumps(manifest))
        out = tmp_path / "scores"
        with pytest.raises(BundleError, match=f"model {target.split('/')[1]}.*do not fit"):
            apply_bundle(swapped, external_slides(study_yaml, patients), out, device="cpu")
        assert not list(out.rglob("*.tiles.zip"))  # no slide was touched
        renamed = with_manifest(bundle, tmp_path / "renamed.lncr",
                                lambda m: m["models"][0].update(architecture="vgg11"))
        with pytest.raises(BundleError, match="'vgg11' in the manifest"):
            apply_bundle(renamed, external_slides(study_yaml, patients), tmp_path / "r",
                         device="cpu")
        with pytest.raises(BadInput, match="--device cuda:7"):
            apply_bundle(bundle, external_slides(study_yaml, patients), tmp_path / "d",
                         device="cuda:7")
        assert not list((tmp_path / "d").rglob("*.tiles.zip"))

    def it_holds_no_patient_identifier_or_study_path(self, exported):
        study_yaml, bundle, patients, _, _ = exported
        text = []
        with zipfile.ZipFile(bundle) as zf:
            for name in zf.namelist():
                if name.endswith((".json", ".csv")):
                    text.append(zf.read(name).decode())
        blob = "\n".join(text)
        assert not [p for p in patients.patient_id if p in blob]
        assert str(study_yaml.parent.parent) not in blob  # nor the weights' folder

    def it_loads_weights_without_unpickling(self, exported):
        _, bundle, _, _, _ = exported
        opened = open_bundle(bundle)
        for m in opened.manifest["models"]:
            assert f"models/{m['key']}/model.safetensors" in opened.manifest["parts"]
            assert m["backbone"] is None or m["backbone"].startswith("weights/")


class DescribeProspectivePatientsInAStudy:
    def it_predicts_them_and_evaluation_leaves_them_out_and_says_so(self, exported, tmp_path):
        from lncr.evaluation.evaluate import evaluate_study

        study_yaml, bundle, patients, sets, weights = exported
        copy = tmp_path / "study"
        shutil.copytree(study_yaml.parent, copy)
        restore_weights(bundle, weights)
        table = pd.read_csv(copy / "patients.csv", dtype=str, keep_default_na=False)
        new = table[table.cohort == "external"].patient_id.iloc[0]
        table.loc[table.patient_id == new, ["cohort", "label"]] = ["prospective", ""]
        table.to_csv(copy / "patients.csv", index=False)
        result = CliRunner().invoke(app, ["validate", str(copy / "study.yaml"), "--no-files"])
        assert result.exit_code == 0, result.output
        study = Study.load(copy / "study.yaml", sets)
        cli = CliRunner().invoke(app, ["predict", str(copy / "study.yaml"), "--device", "cpu"]
                                 + [a for s in sets for a in ("--set", s)])
        assert cli.exit_code == 0, cli.output
        assert re.search(r"\d\d:\d\d:\d\d PAS 20x: \d+ slides: 4/4 final models \(", cli.output)
        multi = read_table(copy / "lncr-output" / "predictions" / "multi_stain.csv")
        row = multi[multi.patient_id == new].iloc[0]
        assert row.cohort == "prospective" and pd.isna(row.label) and row.probability == row.probability
        evaluation = evaluate_study(study, figures=False)
        assert evaluation.left_out == 1
        external = evaluation.metrics[(evaluation.metrics.cohort == "external")
                                      & (evaluation.metrics.model == "multi-stain")]
        assert int(external.patients.iloc[0]) == (patients.cohort == "external").sum() - 1
        cli = CliRunner().invoke(app, ["evaluate", str(copy / "study.yaml"), "--no-figures"]
                                 + [a for s in sets for a in ("--set", s)])
        assert cli.exit_code == 0 and "Left out: 1 patient(s) without an outcome" in cli.output


def restore_weights(bundle, weights) -> None:
    """Put the removed weights file back where the study's runs recorded it."""
    opened = open_bundle(bundle)
    part = next(p for p in opened.manifest["parts"] if p.startswith("weights/"))
    opened.extract(part, weights)


class DescribeTwoExternalSites:
    def it_evaluates_a_phantom_with_two_external_sites_per_site_and_pooled(self, exported,
                                                                           tmp_path):
        """Six more external patients are rendered, tiled, embedded and predicted by the
        study's final models; the external cohort is split over sites A and B."""
        from sklearn.metrics import roc_auc_score

        from lncr.synth.cohort import SynthSettings, synthesize

        study_yaml, bundle, patients, sets, weights = exported
        copy = tmp_path / "study"
        shutil.copytree(study_yaml.parent, copy)
        restore_weights(bundle, weights)
        more = tmp_path / "more"
        synthesize(more, SynthSettings(patients=2, external=6, seed=11, stains=("HE", "PAS")),
                   workers=2)
        table = pd.read_csv(copy / "patients.csv", dtype=str, keep_default_na=False)
        extra = pd.read_csv(more / "patients.csv", dtype=str, keep_default_na=False)
        extra = extra[extra.cohort == "external"].assign(
            patient_id=lambda t: "SITE2-" + t.patient_id)
        table = pd.concat([table, extra[table.columns]], ignore_index=True)
        external = table.cohort == "external"
        table["site"] = ""
        table.loc[external, "site"] = ["A"] * 4 + ["B"] * (int(external.sum()) - 4)
        table.to_csv(copy / "patients.csv", index=False)
        slides = pd.read_csv(copy / "slides.csv", dtype=str, keep_default_na=False)
        new = pd.read_csv(more / "slides.csv", dtype=str, keep_default_na=False)
        new = new[new.patient_id.isin(extra.patient_id.str.removeprefix("SITE2-"))]
        new = new.assign(patient_id="SITE2-" + new.patient_id,
                         path=[str((more / p).resolve()) for p in new.path])
        pd.concat([slides, new[slides.columns]]).to_csv(copy / "slides.csv", index=False)
        args = [a for s in sets for a in ("--set", s)]
        for command in (["tile"], ["predict", "--device", "cpu"], ["evaluate", "--no-figures"]):
            result = CliRunner().invoke(app, [command[0], str(copy / "study.yaml"),
                                              *command[1:], *args])
            assert result.exit_code == 0, result.output
        assert "External cohort per site" in result.output
        out = copy / "lncr-output" / "evaluation"
        by_site = read_table(out / "sites" / "metrics.csv")
        multi = read_table(copy / "lncr-output" / "predictions" / "multi_stain.csv")
        multi = multi[multi.cohort == "external"].assign(
            site=lambda t: t.patient_id.map(dict(zip(table.patient_id, table.site))))
        assert len(multi) == 8 and set(multi.site) == {"A", "B"}
        for site, rows in multi.groupby("site"):
            mine = by_site[(by_site.site == site) & (by_site.model == "multi-stain")].iloc[0]
            assert int(mine.patients) == len(rows)
            assert mine.auc == pytest.approx(roc_auc_score(rows.label, rows.probability))
        pooled = read_table(out / "metrics.csv")
        pooled = pooled[(pooled.cohort == "external") & (pooled.model == "multi-stain")]
        assert int(pooled.patients.iloc[0]) == 8
        tests = read_table(out / "sites" / "comparisons.csv")
        assert set(tests.site) == {"A", "B"} and tests.p.notna().any()


class DescribePredictionShards:
    def it_splits_the_final_models_over_shards_and_the_last_builds_the_ensembles(
            self, exported, tmp_path):
        from lncr.evaluation.final_predictions import final_models

        study_yaml, bundle, patients, sets, weights = exported
        copy = tmp_path / "study"
        shutil.copytree(study_yaml.parent, copy)
        restore_weights(bundle, weights)
        out = copy / "lncr-output"
        models = final_models(out)
        for folder in models.folder:  # every model must predict again
            shutil.rmtree(Path(folder) / "predictions", ignore_errors=True)
        shutil.rmtree(out / "predictions")
        args = [a for s in sets for a in ("--set", s)]
        outputs = []
        for i in (0, 1):
            result = CliRunner().invoke(app, ["predict", str(copy / "study.yaml"), "--shard",
                                              f"{i}/2", "--device", "cpu", *args])
            assert result.exit_code == 0, result.output
            outputs.append(" ".join(result.output.split()))
        assert "ensembles not built yet" in outputs[0] and "has no prediction" in outputs[0]
        assert "ensembles written to predictions/" in outputs[1]
        predicted = [Path(f) for f in models.folder if (Path(f) / "predictions").is_dir()]
        assert len(predicted) == len(models) == 4
        mine = read_table(out / "predictions" / "multi_stain.csv")
        theirs = read_table(study_yaml.parent / "lncr-output" / "predictions" / "multi_stain.csv")
        pd.testing.assert_frame_equal(mine[["patient_id", "probability"]],
                                      theirs[["patient_id", "probability"]])
        bad = CliRunner().invoke(app, ["predict", str(copy / "study.yaml"), "--shard", "2/2"])
        assert bad.exit_code == 2 and "0 ≤ i < N" in bad.output


class DescribeCommandLine:
    def it_exports_and_scores_one_patient_with_plain_progress_lines(self, exported, tmp_path):
        study_yaml, bundle, patients, _, _ = exported
        slides = external_slides(study_yaml, patients)
        pid = slides.patient_id.iloc[0]
        pairs = [a for r in slides[slides.patient_id == pid].itertuples()
                 for a in ("--slide", f"{r.stain}={r.path}")]
        result = CliRunner().invoke(app, ["apply", str(bundle), *pairs, "--patient", "NEW/1",
                                          "--out", str(tmp_path / "s"), "--device", "cpu",
                                          "--no-heatmaps"])
        assert result.exit_code == 0, result.output
        assert "slide × magnification units (" in result.output  # Meter's plain lines
        assert "NEW/1" in result.output and (tmp_path / "s" / "reports" / "NEW%2F1.html").exists()
        assert not list(tmp_path.glob("NEW*"))  # the identifier never left the output folder

    def it_says_what_is_wrong_with_a_bad_bundle_without_a_traceback(self, tmp_path):
        bad = tmp_path / "x.lncr"
        bad.write_text("hello")
        result = CliRunner().invoke(app, ["apply", str(bad), "--slide", "HE=x.svs"])
        assert result.exit_code == 2 and "not a readable lncr bundle" in result.output
        assert "Traceback" not in result.output
