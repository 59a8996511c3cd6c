"""The one-page patient report of ``lncr apply``: self-contained HTML (images inlined, no
script, no network), laid out to print on one A4 page.

It shows P(CR) of the multi-stain ensemble and the predicted class at the bundle's
development threshold beside what that threshold achieved in the study (sensitivity and
specificity on the validation and the external patients); each stain's ensemble and each
magnification's model, with what was used, missing or refused and why; per slide, the
attention heatmap and the most influential tiles; and the bundle's provenance and intended
use (research only).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.fileio import atomic_write_text
from lncr.identifiers import file_name
from lncr.layout import Layout
from lncr.report.assets import array_uri, esc, image_uri

STYLE = """
@page { size: A4; margin: 12mm; }
body { font: 10.5px/1.35 system-ui, sans-serif; color: #111; max-width: 190mm; margin: auto; }
h1 { font-size: 16px; margin: 0 0 2px; } h2 { font-size: 12px; margin: 10px 0 4px; }
.caveat { background: #fff4e5; border: 1px solid #f0a040; padding: 4px 6px; }
.result { display: flex; gap: 14px; align-items: center; border: 2px solid #333;
          padding: 6px 10px; margin: 6px 0; }
.p { font-size: 26px; font-weight: 700; } .cls { font-size: 16px; font-weight: 700; }
table { border-collapse: collapse; width: 100%; } td, th { border: 1px solid #bbb;
          padding: 1px 4px; text-align: left; } th { background: #eee; }
.slides { display: grid; grid-template-columns: repeat(4, 1fr); gap: 6px; }
.slide { break-inside: avoid; } .slide img.map { width: 100%; }
.tiles img { width: 23%; margin-right: 1%; } .muted { color: #666; }
@media print { .slide img.map { max-height: 45mm; object-fit: contain; } }
"""


def _pct(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.0f}%"


def _metric(cohort: dict | None, name: str) -> str:
    m = (cohort or {}).get(name)
    if not m or m.get("value") is None:
        return "–"
    low, high = m["ci"]
    return f"{_pct(m['value'])} ({_pct(low)}–{_pct(high)}; {m['successes']}/{m['total']})"


def _result(row: pd.Series, point: dict) -> str:
    if row.p_cr != row.p_cr:
        return '<div class="result"><span class="cls">Not scored: no slide gave tiles</span></div>'
    cohorts = point.get("cohorts", {})
    rows = "".join(
        f"<tr><td>{esc(c)} ({cohorts[c]['patients']} patients)</td>"
        f"<td>{_metric(cohorts[c], 'sensitivity')}</td>"
        f"<td>{_metric(cohorts[c], 'specificity')}</td></tr>"
        for c in ("validation", "external") if c in cohorts)
    return (f'<div class="result"><div><div class="muted">P(complete response at 12 months)'
            f'</div><div class="p">{row.p_cr:.2f}</div></div><div><div class="muted">'
            f'Predicted at threshold {row.threshold:.3f}</div><div class="cls">{esc(row.predicted)}'
            f'</div></div><div style="flex:1"><table><tr><th>threshold in the study</th>'
            f'<th>sensitivity (95% CI)</th><th>specificity (95% CI)</th></tr>{rows}</table>'
            f'<div class="muted">{esc(point.get("source", ""))}; validation figures are '
            f"optimistic (those patients chose the models), external ones unbiased.</div>"
            f"</div></div>")


def _models_table(pid: str, result, thresholds: dict, manifest: dict) -> str:
    rows = []
    single, stains = result.single, result.stains
    for stain in manifest["stains"]:
        st = stains[(stains.patient_id == pid) & (stains.stain == stain)]
        p = float(st.probability.iloc[0]) if len(st) else None
        t = thresholds.get(stain, {}).get("threshold")
        used = st.magnifications_used.iloc[0] if len(st) else ""
        mags = []
        for mag in manifest["magnifications"]:
            s = single[(single.patient_id == pid) & (single.stain == stain)
                       & (single.magnification == mag)]
            mags.append(f"{mag} {s.probability.iloc[0]:.2f}" if len(s) else f"{mag} –")
        refused = result.refused[(result.refused.patient_id == pid)
                                 & (result.refused.stain == stain)]
        note = ("refused: " + "; ".join(refused.reason)) if len(refused) else (
            "" if p is not None else "no slide")
        cls = "" if p is None or t is None else ("CR" if p >= t else "non-CR")
        rows.append(f"<tr><td>{esc(stain)}</td><td>{'–' if p is None else f'{p:.2f}'}</td>"
                    f"<td>{esc(cls)}</td><td>{esc(', '.join(mags))}</td><td>{esc(used)}</td>"
                    f"<td>{esc(note)}</td></tr>")
    return ("<table><tr><th>stain</th><th>P(CR), stain ensemble</th><th>class at its "
            "threshold</th><th>P(CR) per magnification</th><th>used</th><th>missing or "
            "refused</th></tr>" + "".join(rows) + "</table>")


def _tile_images(store: str, indices: list[int]) -> list[np.ndarray]:
    from lncr.tiling.store import TileStore

    with TileStore(store) as tiles:
        return [tiles[int(i)] for i in indices]


def _slides(pid: str, layout: Layout, index: pd.DataFrame,
            influential: pd.DataFrame | None) -> str:
    """Each slide's heatmap and most influential tiles (``index``: the tile index)."""
    if influential is None:
        return '<p class="muted">Heatmaps were not computed (--no-heatmaps).</p>'
    mine = influential[influential.patient_id == pid]
    blocks = []
    for (stain, mag), top in mine.groupby(["stain", "magnification"], sort=False):
        png = layout.explain_file("heatmaps", stain, mag, pid, ".png")
        store = index[(index.patient_id == pid) & (index.stain == stain)
                      & (index.magnification == mag)].store
        tiles = _tile_images(store.iloc[0], list(top["index"][:4])) if len(store) else []
        thumbs = "".join(f'<img src="{array_uri(t)}" alt="tile">' for t in tiles)
        heat = f'<img class="map" src="{image_uri(png, 500, jpeg=True)}" alt="heatmap">' \
            if png.exists() else ""
        blocks.append(f'<div class="slide"><b>{esc(stain)} {esc(mag)}</b> · P(CR) '
                      f"{top.slide_probability.iloc[0]:.2f}{heat}"
                      f'<div class="tiles">{thumbs}</div><div class="muted">most influential '
                      f"tiles for {esc(top.explained.iloc[0])}</div></div>")
    return f'<div class="slides">{"".join(blocks)}</div>'


def patient_page(pid: str, result, layout: Layout, index: pd.DataFrame, thresholds: dict,
                 influential: pd.DataFrame | None) -> str:
    """The HTML of one patient's report (``layout``, ``index``: the scoring study's output
    folder and tile index)."""
    manifest = result.bundle.manifest
    row = result.scores[result.scores.patient_id == pid].iloc[0]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    missing = [f"{m['stain']} {m['magnification']}" for m in manifest.get("missing_models", [])]
    body = (
        f"<h1>Lupus nephritis: predicted complete response at 12 months</h1>"
        f"<div>Patient <b>{esc(pid)}</b> · scored {esc(when)} · stains used: "
        f"{esc(row.stains_used or 'none')}"
        + (f" · missing: {esc(row.stains_missing)}" if row.stains_missing else "") + "</div>"
        '<p class="caveat"><b>Research use only.</b> Not a medical device: the scores need '
        "local validation before any clinical use. The probability comes from models trained "
        "on one development cohort; it is not a diagnosis and must not guide treatment on its "
        "own.</p>"
        + _result(row, thresholds.get("multi-stain", {}))
        + "<h2>Stains and magnifications</h2>"
        + _models_table(pid, result, thresholds, manifest)
        + "<p class='muted'>Per stain: the mean over its magnifications; across stains: the "
        "maximum over the stains present (the published ensembles). A missing stain is left "
        "out, never imputed.</p>"
        + "<h2>Where the models looked</h2>" + _slides(pid, layout, index, influential)
        + "<h2>Provenance</h2><p class='muted'>"
        f"Bundle {esc(result.bundle.path.name)} (sha256 {esc(result.bundle.sha256[:16])}…), "
        f"study {esc(manifest.get('study'))}, models trained {esc(manifest.get('trained'))} "
        f"with lncr {esc(manifest.get('lncr_version'))}; "
        f"{len(manifest['models'])} final models"
        + (f" (not in the bundle: {esc(', '.join(missing))})" if missing else "")
        + ". Tiles and colour normalisation used the bundle's settings and references. "
        f"Intended use recorded in the bundle: {esc(manifest.get('intended_use', '-'))}.</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{esc(pid)} — lncr patient report</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")


def write_patient_reports(result, study, thresholds: dict,
                          influential: pd.DataFrame | None) -> dict[str, Path]:
    """One report per scored patient under ``<out>/reports/``."""
    folder = result.folder / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    layout = Layout(study.config.output_dir)
    index = layout.read_tiles_index()  # once for every patient
    out = {}
    for pid in result.scores.patient_id:
        path = folder / f"{file_name(pid)}.html"
        atomic_write_text(path, patient_page(pid, result, layout, index, thresholds,
                                             influential))
        out[pid] = path
    return out
