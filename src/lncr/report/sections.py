"""The report's sections, each built from one stage's files under ``output_dir``.

Every function takes the study's output folder and returns HTML; when a stage's files do not
exist yet, the section says which command makes them instead of failing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.display import fmt
from lncr.figures import pyplot
from lncr.identifiers import identifier
from lncr.layout import Layout
from lncr.report.assets import (
    array_uri,
    esc,
    figure_uri,
    image_file,
    img,
    missing,
    read_json,
    read_output_table,
    section,
    table,
)

MAX_CAM_PATIENTS = 4


def _csv(path: Path, needed: tuple[str, ...] = ()) -> pd.DataFrame | None:
    return read_output_table(path, needed)


def study_section(out: Path) -> str:
    summary = read_json(Layout(out).study_summary)
    if summary is None:
        return section("study", "Study", missing("the study summary", "lncr validate STUDY.yaml"))
    patients = pd.DataFrame(summary["patients"]).T.fillna(0).astype(int)
    patients = patients.rename(columns={"1": "CR (label 1)", "0": "non-CR (label 0)",
                                        "unlabelled": "no outcome (scored only)"})
    patients.insert(0, "cohort", patients.index)
    slides = pd.DataFrame(summary["slides"]).T.fillna(0).astype(int)
    slides = slides.loc[:, [c for c in slides.columns
                            if c != "prospective" or slides[c].any()]]
    slides.insert(0, "stain", slides.index)
    body = table(patients.reset_index(drop=True), "Patients by cohort and outcome")
    body += table(slides.reset_index(drop=True), "Slides per stain")
    gaps = summary.get("missing_stains") or {}
    body += (f"<p>Missing stains: {esc(json.dumps(gaps))}.</p>" if gaps
             else "<p>Every patient has every stain.</p>")
    split = read_json(Layout(out).split_record)
    if split:
        body += (f"<p>Patient-level split ({esc(split.get('source'))}, seed "
                 f"{esc(split.get('seed'))}): {esc(split.get('patients'))} development "
                 f"patients, {esc(split.get('val_patients'))} for validation. External "
                 "patients are never part of it.</p>")
    return section("study", "Study", body)


def _normalisation_example(out: Path, index: pd.DataFrame, stain: str) -> np.ndarray | None:
    """A tile as read from the slide (left) and as stored after standardisation and colour
    normalisation (right)."""
    import cv2

    from lncr.slides.reader import open_slide
    from lncr.tiling.store import TileStore

    rows = index[(index.stain == stain) & (index.status == "ok") & (index.kept > 0)]
    if rows.empty:
        return None
    r = rows.sort_values(["magnification", "patient_id"]).iloc[-1]
    with TileStore(r.store) as store:
        tile = store[0]
        x, y, size0 = (float(v) for v in store.coords.loc[0, ["x", "y", "size0"]])
    with open_slide(r.slide) as slide:
        level = slide.level_for(size0 / tile.shape[0])
        ds = slide.level_downsamples[level]
        side = int(round(size0 / ds))
        raw = slide.read(level, int(x), int(y), side, side)
    raw = cv2.resize(raw, tile.shape[:2][::-1], interpolation=cv2.INTER_AREA)
    gap = np.full((tile.shape[0], 6, 3), 255, np.uint8)
    return np.hstack([raw, gap, tile])


def _annotated(index: pd.DataFrame) -> str:
    """A sentence on the slides tiled inside QuPath annotations, if any."""
    if "annotations" not in index:
        return ""
    marked = index[index.annotations.fillna("") != ""]
    if marked.empty:
        return ""
    slides = marked.groupby(["patient_id", "stain"]).ngroups
    return (f"<p>{slides} slide(s) were tiled inside a pathologist's QuPath annotations "
            f"({int(marked.outside_regions.sum())} grid cells outside their regions were not "
            "read); their QC thumbnails outline the regions (yellow: used, magenta: left "
            "out).</p>")


def tiling_section(out: Path) -> str:
    summary = _csv(Layout(out).tiles_summary)
    layout = Layout(out)
    index = layout.read_tiles_index() if layout.tiles_index.exists() else None
    if summary is None or index is None:
        return section("tiling", "Tiling and quality control",
                       missing("the tiles", "lncr tile STUDY.yaml"))
    body = table(summary, "Tiles kept per stain, magnification and cohort")
    failed = index[index.status != "ok"]
    body += (f"<p>{len(failed)} slide × magnification unit(s) failed; their errors are in "
             "<code>tiles/index.csv</code>.</p>" if len(failed) else
             "<p>Every slide was tiled.</p>")
    body += _annotated(index)
    plt = pyplot()
    ok = index[index.status == "ok"]
    groups = list(ok.groupby(["stain", "magnification"]))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(groups) + 2), 3))
    ax.boxplot([g.kept.to_numpy() for _, g in groups], tick_labels=[f"{s}\n{m}" for (s, m), _
                                                                     in groups])
    ax.set_ylabel("tiles per slide")
    ax.set_title("Tiles kept per slide", fontsize=9)
    body += img(figure_uri(fig), "Tiles kept per slide by stain and magnification", "70%")
    qc = Layout(out).tiles_qc
    thumbs = sorted(qc.glob("*.png"))[:4] if qc.exists() else []
    if thumbs:
        body += ("<h3>QC thumbnails</h3><p>Kept tiles outlined on the slide, one colour per "
                 "magnification (first slides).</p>")
        body += '<div class="grid">' + "".join(
            image_file(p, p.stem, 900, jpeg=True) for p in thumbs) + "</div>"
    norm = Layout(out).tiles_norm
    refs = sorted(norm.glob("*-reference.png")) if norm.exists() else []
    if refs:
        body += ("<h3>Colour normalisation</h3><p>Each stain is normalised to its own "
                 "reference, chosen from development slides only. Below each reference: a tile "
                 "as read from the slide (left) and as stored (right).</p><div class=grid>")
        for ref in refs:
            stain = identifier(ref.stem.replace("-reference", ""))
            meta = read_json(Layout(out).norm_reference(stain)) or {}
            method = meta.get("reference", {}).get("method", "?")
            body += "<div>" + image_file(ref, f"{stain}: reference ({method})", 400)
            try:
                example = _normalisation_example(out, index, stain)
            except Exception as exc:  # a missing or unreadable slide must not stop the report
                example, note = None, f"(example unavailable: {exc})"
            else:
                note = ""
            if example is not None:
                body += img(array_uri(example), f"{stain}: before | after")
            elif note:
                body += f'<p class="note">{esc(note)}</p>'
            body += "</div>"
        body += "</div>"
    return section("tiling", "Tiling and quality control", body)


def failures_box(selection: dict) -> str:
    """A warning naming every architecture or stain × magnification whose units all failed."""
    lines = selection.get("failure_lines") or []
    if not lines:
        return ""
    return ("<div class=failure><strong>The sweep is incomplete.</strong><ul>"
            + "".join(f"<li>{esc(line)}</li>" for line in lines)
            + "</ul><p>See <code>sweep/failures/</code>; re-running <code>lncr sweep</code> "
              "retries the failed units.</p></div>")


def left_out_box(selection: dict) -> str:
    """The stain × magnifications the selection could not score, and the stains left without
    an architecture, with the reasons."""
    dropped = selection.get("left_out") or {}
    unselected = selection.get("unselected_stains") or {}
    if not dropped and not unselected:
        return ""
    items = "".join(f"<li>{esc(where)}: {esc(d['reason'])} ({d['skipped']} of {d['units']} "
                    "units skipped)</li>" for where, d in dropped.items())
    items += "".join(f"<li><b>{esc(stain)}</b> has no model: {esc(why)}</li>"
                     for stain, why in unselected.items())
    return ("<div class=missing><strong>Left out of the selection.</strong> These stain × "
            "magnifications had no patients with tiles to score a unit on (a needle core "
            "at 10x often keeps no tile); the selection used the others, and the final "
            "models are trained wherever both outcomes can train.<ul>" + items + "</ul></div>")


def stability_table(selection: dict) -> str:
    """Per configuration, the criterion's mean and spread and how often the rule chose it."""
    rows = selection.get("stability") or []
    if not rows:
        return ""
    view = pd.DataFrame([{
        "stain": r["stain"], "architecture": r["architecture"], "bag size": r["bag_size"],
        "mean": fmt(r["mean"]), "s.d.": fmt(r["sd"]),
        "range": f"{fmt(r['min'], 2)}–{fmt(r['max'], 2)}", "scores": r["scores"],
        "s.d. over folds": fmt(r.get("fold_sd", float("nan"))),
        "chosen in": f"{r['wins']} of {r['repeats']} repeats"} for r in rows])
    if all(r.get("folds_with_auc", 0) == 0 for r in rows):
        view = view.drop(columns=["s.d. over folds"])
    return table(view, "Selection stability: the criterion of each configuration over "
                       "magnifications and repeats, and how often the rule, applied to one "
                       "repeat alone, chose it")


def sweep_section(out: Path) -> str:
    summary = _csv(Layout(out).sweep_summary)
    selection = read_json(Layout(out).selection)
    if selection is not None and selection.get("status") == "failed":
        return section("sweep", "Model selection", failures_box(selection))
    if summary is None or selection is None:
        return section("sweep", "Model selection",
                       missing("the sweep", "lncr sweep STUDY.yaml"))
    plt = pyplot()
    stains = list(dict.fromkeys(summary.stain))
    fig, axes = plt.subplots(1, len(stains), figsize=(3.2 * len(stains), 3), squeeze=False,
                             sharey=True)
    colours = {a: plt.get_cmap("tab10")(i) for i, a in
               enumerate(sorted(summary.architecture.unique()))}
    bags = sorted(summary.bag_size.unique())
    for ax, stain in zip(axes[0], stains):
        part = summary[summary.stain == stain]
        for arch, rows in part.groupby("architecture"):
            agg = rows.groupby("bag_size").mean_val_auc.mean()
            chosen = selection["architectures"].get(stain) == arch
            ax.plot(agg.index, agg.values, marker="o", lw=2.5 if chosen else 1,
                    color=colours[arch], label=arch + (" (selected)" if chosen else ""))
        ax.axvline(selection["bag_size"], color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(bags, [str(b) for b in bags])
        ax.minorticks_off()
        ax.set_xlabel("bag size")
        ax.set_title(stain, fontsize=9)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("mean validation AUC")
    body = failures_box(selection) + left_out_box(selection) + protocol_note(out)
    body += img(figure_uri(fig), "Validation AUC by architecture and bag size (mean over "
                                 "magnifications and repeats; dotted: the selected bag size)")
    decided = selection.get("decided_by") or {}
    why = decided.get("architecture", {})
    chosen = ", ".join(f"{s}: <b>{esc(a)}</b>" + (f" ({esc(why[s])})" if s in why else "")
                       for s, a in selection["architectures"].items())
    bag_why = f" ({esc(decided['bag_size'])})" if "bag_size" in decided else ""
    body += (f"<p>Selected: {chosen}; bag size <b>{esc(selection['bag_size'])}</b>{bag_why}."
             "</p>"
             f"<p class=note>Rule: {esc(selection.get('rule', ''))}</p>")
    stopping = selection.get("early_stopping") or {}
    if stopping.get("method", "none") != "none":
        body += (f"<p>Early stopping ({esc(stopping['method'])}): "
                 f"{esc(stopping.get('epochs_saved'))} of {esc(stopping.get('epochs_full_grid'))}"
                 " epochs saved.</p>")
    body += stability_table(selection)
    cols = ["stain", "magnification", "architecture", "bag_size", "units", "done", "failed",
            "mean_val_auc", "sd_val_auc", "mean_val_loss"]
    body += table(summary[[c for c in cols if c in summary]], "Sweep summary")
    return section("sweep", "Model selection", body)


def protocol_note(out: Path) -> str:
    """Which selection protocol ran — how units were validated (one split per repeat, or
    k-fold) and whether their backbones were fine-tuned or frozen — said plainly."""
    record = read_json(Layout(out).sweep_record) or {}
    settings = record.get("settings") or {}
    note = ""
    if settings.get("validation") == "kfold":
        note += ("<div class=protocol><p><b>Validation: k-fold.</b> Each configuration was "
                 f"trained once per fold ({esc(settings.get('folds'))} patient-level folds "
                 "stratified by outcome"
                 + (", each development site in one fold" if settings.get("fold_by_site")
                    else "") +
                 ") and scored by the AUC of the pooled out-of-fold predictions of every "
                 "development patient with tiles; the final models were trained on every "
                 "development patient, and the development patients' results below are "
                 "out of fold.</p></div>")
    if settings.get("backbone") != "frozen":
        return note
    return note + ("<div class=protocol><p><b>Selection protocol: frozen features.</b> Every unit of the "
            "grid trained with its backbone frozen, on tile features computed once "
            "(<code>sweep.backbone: frozen</code>); only the selected configurations were "
            "then trained as final models with the training settings. This is cheaper than "
            "the published protocol (every unit fine-tuned), and its choice of architecture "
            "and bag size may differ from it.</p></div>")


def missing_models_box(record: dict) -> str:
    """The final models that do not exist (not trained, failed) and why, from
    ``predictions.json``."""
    missing = record.get("missing_models") or []
    if not missing:
        return ""
    items = "".join(f"<li>{esc(m['stain'])} {esc(m['magnification'])}: "
                    f"{esc(m.get('error') or 'not finished')}</li>" for m in missing)
    return ("<div class=missing><strong>Final models that do not exist.</strong> The "
            "ensembles are taken over the models that do.<ul>" + items + "</ul></div>")


def unusable_box(out: Path) -> str:
    """A warning naming every final model that does not exist and every patient a final
    model could not score (no tiles), from ``predictions/predictions.json``."""
    record = read_json(Layout(out).predictions_record) or {}
    lost = record.get("patients_without_tiles") or {}
    if not lost:
        return missing_models_box(record)
    items = "".join(f"<li>{esc(model)}: {esc(u['patient_id'])} ({esc(u['cohort'])}) — "
                    f"{esc(u['reason'])}</li>" for model, rows in lost.items() for u in rows)
    return missing_models_box(record) + (
        "<div class=failure><strong>Patients left out of some models.</strong> These slides "
        "have no tiles at that magnification, so the model gave them no probability; the "
        "ensembles use the models that did.<ul>" + items + "</ul></div>")


def final_section(out: Path) -> str:
    models = _csv(Layout(out).final_models)
    if models is None:
        return section("final", "Final models", missing("the final models",
                                                         "lncr sweep STUDY.yaml"))
    cols = [c for c in ("stain", "magnification", "architecture", "bag_size", "seed", "status",
                        "val_auc", "error") if c in models]
    return section("final", "Final models", table(models[cols], "One model per stain × "
                                                                "magnification"))


def interval(low: float, high: float) -> str:
    return f"{low:.2f}–{high:.2f}" if low == low and high == high else "—"


def results_section(out: Path) -> str:
    ev = Layout(out).evaluation_dir
    metrics = _csv(Layout(out).metrics)
    if metrics is None:
        return section("results", "Results", missing("the evaluation",
                                                     "lncr predict STUDY.yaml && lncr evaluate "
                                                     "STUDY.yaml"))
    if metrics.empty:
        return section("results", "Results", nothing_evaluated(out))
    thresholds = _csv(Layout(out).evaluation_table("threshold_metrics"))
    comparisons = _csv(Layout(out).evaluation_table("comparisons"))
    body = unusable_box(out) + (
        "<p>The threshold of each model is fixed on the validation patients and applied "
        "unchanged to the external cohort. 95 % intervals: DeLong for AUCs, Wilson for "
        "proportions.</p>")
    for cohort in ("validation", "external"):
        mine = metrics[metrics.cohort == cohort]
        if mine.empty:
            continue
        body += f"<h3>{esc(cohort.capitalize())} cohort</h3>"
        if "estimate" in mine.columns:
            estimate, note = mine.estimate.iloc[0], mine.estimate_note.iloc[0]
            body += (f"<p class=estimate-{esc(estimate)}><strong>{esc(estimate.capitalize())} "
                     f"estimate</strong>: {esc(note)}.</p>")
        body += "<div class=grid>"
        for kind in ("roc", "calibration"):
            path = ev / f"{kind}-{cohort}.png"
            if path.exists():
                body += image_file(path, f"{kind.upper() if kind == 'roc' else 'Calibration'}"
                                         f" — {cohort}", 900)
        body += "</div>"
        notes = mine.auc_note if "auc_note" in mine.columns else [""] * len(mine)
        view = mine.assign(AUC=[fmt(v, 2, n) for v, n in zip(mine.auc, notes)],
                           CI=[interval(a, b) for a, b in zip(mine.delong_ci_low,
                                                              mine.delong_ci_high)])
        body += table(view[["model", "kind", "patients", "cr_patients", "AUC", "CI", "brier",
                            "threshold"]], f"AUC and Brier score — {cohort}")
        if thresholds is not None:
            t = thresholds[thresholds.cohort == cohort]
            notes = t.note if "note" in t.columns else [""] * len(t)
            t = t.assign(cell=[f"{v:.2f} ({interval(a, b)})" if v == v else fmt(v, 2, n)
                               for v, a, b, n in zip(t.value, t.ci_low, t.ci_high, notes)])
            wide = t.pivot_table(index="model", columns="metric", values="cell",
                                 aggfunc="first", sort=False).reset_index()
            body += table(wide, f"Metrics at the threshold ({mine.threshold_source.iloc[0]})"
                                f" — {cohort}" if "threshold_source" in mine.columns
                          else f"Metrics at the validation-fixed threshold — {cohort}")
        if comparisons is not None:
            c = comparisons[comparisons.cohort == cohort]
            if len(c):
                body += table(c.drop(columns=["cohort"]),
                              f"Paired DeLong tests — {cohort}")
    return section("results", "Results", body + site_table(out) + baseline_table(out, metrics))


def nothing_evaluated(out: Path) -> str:
    """A study without outcomes (``lncr apply``'s scoring study): why nothing was evaluated,
    and every patient's predicted probability of CR per stain and for the ensemble."""
    layout = Layout(out)
    why = (read_json(layout.evaluation_record) or {}).get("nothing_to_evaluate") or (
        "no patient with an outcome has a prediction")
    body = f"<p class=missing>Nothing to evaluate: {esc(why)}.</p>"
    multi, stains = _csv(layout.predictions("multi_stain")), _csv(layout.predictions(
        "stain_ensembles"))
    if multi is None:
        return body
    view = multi[["patient_id", "cohort", "probability"]].rename(
        columns={"probability": "multi-stain P(CR)"})
    if stains is not None and len(stains):
        wide = stains.pivot_table(index="patient_id", columns="stain", values="probability",
                                  aggfunc="first").add_prefix("P(CR) ").reset_index()
        view = view.merge(wide, on="patient_id", how="left")
    shown = view.assign(**{c: [fmt(v, 3) for v in view[c]] for c in view.columns
                           if c.startswith(("P(CR)", "multi"))})
    return body + table(shown, "Predicted probability of complete response (missing stain: —)")


def site_table(out: Path) -> str:
    """The external cohort per site (``lncr evaluate`` with a ``site`` column), or nothing."""
    sites = _csv(Layout(out).site_table("metrics"))
    if sites is None:
        return ""
    notes = sites.auc_note if "auc_note" in sites.columns else [""] * len(sites)
    view = sites.assign(AUC=[fmt(v, 2, n) for v, n in zip(sites.auc, notes)],
                        CI=[interval(a, b) for a, b in zip(sites.delong_ci_low,
                                                           sites.delong_ci_high)])
    body = ("<h3>External cohort by site</h3><p>Each site evaluated on its own, at the "
            "threshold fixed on the validation patients; the pooled rows are above.</p>")
    body += table(view[["site", "model", "kind", "patients", "cr_patients", "AUC", "CI",
                        "brier"]], "AUC and Brier score per external site")
    tests = _csv(Layout(out).site_table("comparisons"))
    if tests is not None and len(tests):
        body += table(tests.drop(columns=["cohort"]), "Paired DeLong tests per external site")
    return body


def baseline_table(out: Path, metrics: pd.DataFrame) -> str:
    """The ensembles' AUCs beside the colour-statistics control's (``lncr evaluate
    --baseline``), or a note that the control has not run."""
    control = _csv(Layout(out).baseline_metrics)
    if control is None:
        return ("<p class=note>No baseline yet: <code>lncr evaluate STUDY.yaml --baseline"
                "</code> fits colour statistics of the same tiles, the control a deep model "
                "must beat.</p>")
    from lncr.evaluation.baseline import beside

    both = beside(metrics, control)
    view = both.assign(lncr=both.auc_lncr.map("{:.2f}".format),
                       baseline=both.auc_baseline.map("{:.2f}".format))
    return ("<h3>Against a trivial model</h3><p>The same tiles, summarised as colour "
            "statistics (optical density mean and s.d., a coarse colour histogram) and fitted "
            "by logistic regression on the training patients, through the same ensembles and "
            "thresholds.</p>" + table(view[["cohort", "model", "lncr", "baseline"]],
                                     "AUC: lncr and the colour-statistics baseline"))


def pointing_table(ex: Path) -> str:
    """The phantom's pointing games (``bench/explain_checks.py phantom``), when they were
    played; nothing otherwise (a real cohort has no lesion masks)."""
    games = _csv(ex / "pointing" / "pointing.csv")
    if games is None:
        return ""
    columns = [c for c in ("explanation", "game", "target", "stain", "magnification", "val_auc",
                           "n", "hit_rate", "random_baseline", "ratio", "p_value", "flat_maps")
               if c in games.columns]
    return ("<h3>Pointing games on the phantom</h3><p>How often the explanations land on the "
            "planted lesions, against chance (one-sided Wilcoxon p): attention's top tiles "
            "against random tiles; CAM maxima against a random point of a random tile "
            "(<code>peak_vs_random_tiles</code>) and of the same tile "
            "(<code>peak_vs_points</code>); the map's mass on lesion against a uniform map "
            "(<code>energy_vs_uniform</code>). See docs/explain.md.</p>"
            + table(games[columns], "explain/pointing/pointing.csv"))


def explain_section(out: Path) -> str:
    ex = Layout(out).explain_dir
    body = ""
    heatmaps = sorted((ex / "heatmaps").rglob("*.png")) if (ex / "heatmaps").exists() else []
    if heatmaps:
        body += ("<h3>Attention heatmaps</h3><p>Relative attention of every tile on the slide "
                 "(1 = an average tile); all of them are in <code>explain/heatmaps/</code>.</p>"
                 "<div class=grid>")
        body += "".join(image_file(p, f"{p.parent.parent.name} {p.parent.name} {p.stem}", 800,
                                   jpeg=True) for p in heatmaps[:6]) + "</div>"
    else:
        body += missing("attention heatmaps", "lncr explain heatmap STUDY.yaml")
    cams = _csv(Layout(out).gradcam_table, ("patient_id", "stain", "magnification"))
    if cams is not None:
        meta = read_json(Layout(out).gradcam_record, ("models",)) or {}
        why = {c["patient_id"]: f"{c['cohort']}: {c['why']}" for c in meta.get("chosen") or []}
        body += ("<h3>Grad-CAM</h3><p>Influential tiles (top row) and the Grad-CAM of the bag's "
                 f"evidence for the target outcome ({esc(meta.get('target', 'predicted'))}) "
                 "over them (bottom row), computed inside their bag.</p>")
        patients = list(why) or sorted(cams.patient_id.unique())
        shown = [p for p in patients if p in set(cams.patient_id)][:MAX_CAM_PATIENTS]
        if len(set(cams.patient_id)) > len(shown):
            body += (f'<p class="note">{len(shown)} of {cams.patient_id.nunique()} explained '
                     "patients shown; every gallery is in <code>explain/gradcam/</code>.</p>")
        for patient in shown:
            folder_mag = cams[cams.patient_id == patient][["stain", "magnification"]]
            body += f"<h4>{esc(patient)} {esc(why.get(patient, ''))}</h4><div class=grid>"
            for s, m in folder_mag.drop_duplicates().itertuples(index=False):
                path = Layout(out).explain_file("gradcam", s, m, patient, "") / "gallery.png"
                if path.exists():
                    body += image_file(path, f"{patient} {s} {m}", 1200, jpeg=True)
            body += "</div>"
    else:
        body += missing("Grad-CAM galleries", "lncr explain gradcam STUDY.yaml")
    body += pointing_table(ex)
    units = sorted((ex / "clusters").glob("*/*/tiles.csv")) if (ex / "clusters").exists() else []
    if units:
        body += "<h3>DCCS clusters of influential tiles</h3>"
        for t in units:
            folder = t.parent
            meta = read_json(folder / "cluster.json") or {}
            chi = meta.get("chi_square", {})
            body += (f"<h4>{esc(meta.get('stain'))} {esc(meta.get('magnification'))}: "
                     f"{esc(meta.get('tiles'))} tiles of {esc(meta.get('patients'))} development"
                     f" patients; clusters × outcome chi-square p = "
                     f"{chi.get('p_value', float('nan')):.3g}</h4><div class=grid>")
            for name, caption in (("tsne-cluster.png", "t-SNE by cluster"),
                                  ("tsne-outcome.png", "t-SNE by outcome"),
                                  ("galleries.png", "The 10 most typical tiles per cluster"),
                                  ("association.png", "Clusters by outcome")):
                if (folder / name).exists():
                    body += image_file(folder / name, caption, 1000,
                                       jpeg=name == "galleries.png")
            body += "</div>"
            assoc = _csv(folder / "association.csv")
            if assoc is not None:
                body += table(assoc, "Outcome association per cluster (Fisher: tiles; "
                                     "Mann-Whitney: patients)")
    else:
        body += missing("DCCS clusters", "lncr explain cluster STUDY.yaml")
    return section("explain", "Explanations", body)
