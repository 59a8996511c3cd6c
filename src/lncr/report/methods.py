"""The methods appendix, written from the settings recorded by the stages that ran.

Each paragraph reads the record its stage wrote (``tiles/run.json``, ``sweep/sweep.json``,
``final/final.json`` and the final runs' ``config.json``, ``predictions/predictions.json``,
``evaluation/evaluation.json``, ``explain/…json``), so the text describes what ran, not what
the study file asks for today. Paragraphs of stages that did not run are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from lncr.layout import Layout
from lncr.report.assets import esc, read_json


def _mags(values) -> str:
    return ", ".join(str(v) for v in values)


def _tiling(out: Path) -> str | None:
    run = read_json(Layout(out).tiles_record)
    if run is None:
        return None
    s = run["settings"]
    t = s.get("tiling", s)
    norm = ", ".join(f"{k} {v}" for k, v in (t.get("normalisation") or {}).items())
    return (f"Slides were read with OpenSlide (tiffslide where OpenSlide could not open them) "
            f"and cut into non-overlapping {t.get('tile_size')}-pixel tiles at "
            f"{_mags(run.get('magnifications', []))}. A pixel was background when its grey "
            f"value exceeded {t.get('background_threshold')}; tiles with more than "
            f"{100 * float(t.get('max_background_fraction', 0)):.0f} % background were dropped. "
            f"Brightness was standardised "
            f"({'on' if t.get('luminosity_standardise') else 'off'}, percentile "
            f"{t.get('luminosity_percentile')}) and each stain was colour-normalised against "
            f"its own development reference ({norm or 'defaults'}). Tiles were stored as "
            f"{t.get('encoding')}.")


def _training(out: Path) -> str | None:
    final = read_json(Layout(out).final_record)
    sweep = read_json(Layout(out).sweep_record)
    if final is None and sweep is None:
        return None
    text = ""
    if sweep is not None:
        g = sweep["settings"]
        tr = sweep.get("training", {})
        text += (f"The sweep trained every combination of architecture "
                 f"({', '.join(g['architectures'])}) and bag size "
                 f"({', '.join(str(b) for b in g['bag_sizes'])}) {g['repeats']} time(s) per "
                 f"stain and magnification ({_mags(g.get('magnifications') or ['all'])}), "
                 f"{sweep.get('epochs')} epoch(s) per unit, with seeds "
                 f"{tr.get('seed', 0)} + repeat; early stopping: {g.get('early_stopping')}. ")
        if g.get("validation") == "kfold":
            text += (f"Each unit was trained once per fold of {g['folds']} patient-level folds "
                     "stratified by outcome (a new partition per repeat"
                     + (", each development site in one fold" if g.get("fold_by_site") else "")
                     + "); a configuration's score was the AUC of its pooled out-of-fold "
                     "predictions. ")
    if final is not None:
        arch = ", ".join(f"{k} {v}" for k, v in final["architectures"].items())
        kfold = (final.get("validation") or {}).get("method") == "kfold"
        trained_on = ("every development patient; the development patients were predicted "
                      "out of fold by the selected configuration's fold models, and the "
                      "threshold was fixed on those predictions" if kfold
                      else "the study split")
        text += (f"Selected: {arch}; bag size {final['bag_size']} (rule: {final['rule']}). "
                 f"Final models were trained for {final['epochs']} epochs with seed "
                 f"{final['seed']} on {trained_on}. ")
    runs = sorted(Layout(out).final_runs.glob("*/*/*/config.json"))
    if runs:
        c = json.loads(runs[0].read_text())
        s = c["settings"]
        g = c.get("geometry", {})
        text += (f"Each model embeds every tile of a bag with its backbone into "
                 f"{s['embedding_dim']} features, then a {s['transformer_layers']}-layer "
                 f"transformer encoder ({s['transformer_heads']} heads) and attention pooling "
                 f"give one probability of complete response per bag. Tiles were cropped to "
                 f"{g.get('crop')} px and resized to {g.get('size')} px; optimiser "
                 f"{s['optimiser']}, learning rate {s['learning_rate']} (backbone × "
                 f"{s['backbone_lr_factor']}), {s['warmup_epochs']} warm-up epoch(s), weight "
                 f"decay {s['weight_decay']}, precision {c.get('precision')}, pretrained "
                 f"weights: {c.get('weights') or 'none'}.")
    return text


def _evaluation(out: Path) -> str | None:
    pred = read_json(Layout(out).predictions_record)
    ev = read_json(Layout(out).evaluation_record)
    if pred is None and ev is None:
        return None
    text = ""
    if pred is not None:
        text += (f"Predictions used the {pred.get('checkpoint')} checkpoint over "
                 f"{'every tile' if pred.get('tiles') == 'all' else 'one evaluation bag'} of "
                 f"each slide; per stain, the {pred.get('within_stain')} over magnifications; "
                 f"across stains, the {pred.get('across_stains')}. ")
    if ev is not None:
        s = ev["settings"]
        text += (f"AUCs have DeLong {100 * s['confidence']:.0f} % intervals and stratified "
                 f"bootstrap intervals ({s['bootstrap_resamples']} resamples, seed {s['seed']}); "
                 f"the threshold ({s['threshold']}) was fixed on the validation patients and "
                 f"applied unchanged to the external cohort; proportions have Wilson intervals; "
                 f"calibration uses {s['calibration_bins']} bins; the multi-stain ensemble was "
                 f"compared with each stain by paired DeLong tests.")
    return text


def _explain(out: Path) -> str | None:
    ex = Layout(out).explain_dir
    parts = []
    heat = read_json(Layout(out).explain_record)
    if heat is not None:
        parts.append(f"Tile attention and leave-one-out effects were computed for every tile; "
                     f"the {heat['top_k']} tiles with the highest relative attention per slide "
                     f"are its influential tiles.")
    cam = read_json(Layout(out).gradcam_record, ("models",))
    if cam is not None:
        m = cam["models"][0] if cam["models"] else {}
        parts.append(f"Grad-CAM ({m.get('method')}, layer {m.get('layer')} of the backbone, "
                     f"target: {cam['target']}, differentiating the bag's logit) was computed "
                     f"for the influential tiles inside their bags with pytorch-grad-cam.")
    for path in sorted(ex.glob("clusters/*/*/cluster.json")):
        c = json.loads(path.read_text())
        d = c["dccs"]
        parts.append(f"DCCS ({c['stain']} {c['magnification']}): {d['clusters']} clusters, "
                     f"{d['style_dim']}-d style, prior N(0, {d['style_std']}²) × uniform "
                     f"one-hot, loss weights {d['beta_mi']}/{d['beta_adv']}/{d['beta_aug']} "
                     f"(MI/adversarial/augmentation), {d['critic_steps']} critic steps per "
                     f"encoder step, Adam {d['lr']:g} betas {tuple(d['betas'])}, {d['epochs']} "
                     f"epochs on {c['tiles']} development tiles; t-SNE of the latent.")
    return " ".join(parts) or None


def methods_section(out: Path) -> str:
    """The appendix: one paragraph per stage that ran, then the package versions."""
    from lncr.provenance import package_versions

    paragraphs = [(title, fn(out)) for title, fn in (
        ("Tiling", _tiling), ("Models and selection", _training),
        ("Ensembles and statistics", _evaluation), ("Explanations", _explain))]
    body = "".join(f"<h3>{esc(t)}</h3><p>{esc(p)}</p>" for t, p in paragraphs if p)
    if not body:
        body = "<p>No stage has run yet.</p>"
    versions = package_versions("torch", "torchvision", "numpy", "scipy", "scikit-learn",
                                "pandas", "openslide-python", "openslide-bin", "grad-cam",
                                "timm", "matplotlib")
    body += "<h3>Software</h3><p>" + esc(", ".join(f"{k} {v}" for k, v in versions.items()
                                                   if v != "not installed")) + ".</p>"
    return f'<section id="methods"><h2>Methods appendix</h2>{body}</section>'
