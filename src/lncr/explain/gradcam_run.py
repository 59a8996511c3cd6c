"""``lncr explain gradcam``: Grad-CAM of the influential tiles of chosen patients.

For every finished final model and every slide of the chosen patients, the slide's influential
tiles (its ``explain.top_k`` tiles by relative attention, from the cached tile scores) are
explained inside the bag they were scored in: each chunk that holds an influential tile goes
through :class:`lncr.explain.gradcam.BagCAM` once (one forward and one backward pass).
Writes ``<output_dir>/explain/gradcam/``:

- ``<stain>/<mag>/<patient>/tile-<rank>-<index>.png`` — the tile as the model saw it (the
  centred crop) and the map over it, side by side;
- ``<stain>/<mag>/<patient>/gallery.png`` — all the slide's influential tiles and their maps;
- ``<stain>/<mag>/<patient>/cams.npy`` — the raw maps (k, H, W) in [0, 1] at the model's input
  size, row i for row i of ``cams.csv``: rank, tile index, level-0 x, y, size, the level-0
  position of the map's maximum, attention and effect (``cams.csv`` is written last and marks
  the slide done);
- ``gradcam.csv`` — every explained tile of every slide; ``gradcam.json`` — method, layer and
  target per model, threshold, patients and why they were chosen, versions.

Patients (``--patient`` overrides): with ``explain.cam_patients: chosen`` (the default), per
cohort (validation and external), the most confident correct and the most confident incorrect
multi-stain prediction at the threshold that ``lncr evaluate`` fixed on the validation
patients (0.5 before evaluation) — the predictions a reader most needs to see explained;
otherwise every patient of a side or cohort (``train``, the authors' choice, ``val``,
``development``, ``external`` or ``all``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.evaluation.cohort_metrics import MULTI
from lncr.explain.models import (
    FinalModel,
    cached_scores,
    final_models_for,
    is_fresh,
    model_thresholds,
    stamp,
)
from lncr.fileio import (
    atomic_save_array,
    atomic_save_figure,
    atomic_save_image,
    atomic_write_json,
    atomic_write_text,
)
from lncr.layout import Layout, read_table, write_table
from lncr.locks import locks_output
from lncr.study.validate import Study


def default_patients(out: Path) -> tuple[list[str], pd.DataFrame]:
    """The most confident correct and incorrect multi-stain predictions per cohort."""
    path = Layout(out).predictions("multi_stain")
    if not path.exists():
        raise ValueError(f"no predictions at {path}: run `lncr predict STUDY.yaml` first, or "
                         "name patients with --patient")
    threshold = model_thresholds(out).get(MULTI, 0.5)
    table = read_table(path).dropna(subset=["probability"])
    table = table.assign(predicted=(table.probability >= threshold).astype(int),
                         confidence=(table.probability - threshold).abs())
    table["correct"] = table.predicted == table.label
    picks = []
    for cohort, part in (("validation", table[table.split == "val"]),
                         ("external", table[table.split == "external"])):
        for correct in (True, False):
            mine = part[part.correct == correct].sort_values(["confidence", "patient_id"],
                                                             ascending=[False, True])
            if len(mine):
                r = mine.iloc[0]
                picks.append({"patient_id": r.patient_id, "cohort": cohort,
                              "why": f"most confident {'correct' if correct else 'incorrect'}",
                              "probability": float(r.probability), "label": int(r.label),
                              "threshold": threshold})
    chosen = pd.DataFrame(picks)
    if chosen.empty:
        raise ValueError(f"{path} has no validation or external predictions to choose from; "
                         "name patients with --patient")
    return list(dict.fromkeys(chosen.patient_id)), chosen


def _gallery(tiles: list[np.ndarray], overlays: list[np.ndarray], titles: list[str],
             title: str, path: Path) -> None:
    from lncr.figures import pyplot

    plt = pyplot()

    k = len(tiles)
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k + 0.4, 3.6), squeeze=False)
    for i in range(k):
        for row, image in enumerate((tiles[i], overlays[i])):
            axes[row, i].imshow(image)
            axes[row, i].set_axis_off()
        axes[0, i].set_title(titles[i], fontsize=6)
    fig.suptitle(title, fontsize=8)
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def bag_maps(fm: FinalModel, cam, entry, top: pd.DataFrame, outcome: int
             ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray, float]], float]:
    """Each tile of ``top``: (the crop the model saw, its map, its bag's probability), from
    one pass per chunk holding one of them; and the crop's fraction of the tile's side."""
    from lncr.data.bags import BagDataset, chunk_count, chunk_members

    dataset = BagDataset([entry], 1, train=False, crop=fm.crop)
    n = entry.n_tiles
    chunks = chunk_count(n, fm.chunk)
    found: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    for c in sorted(set(top.chunk.astype(int))):
        members = chunk_members(n, chunks, c)
        bag, _, _, _ = dataset.bag(0, members, epoch=0)
        maps, bag_probability = cam(fm.inputs(bag[None])[0], outcome)
        for index in top.loc[top.chunk == c, "index"]:
            pos = int(np.flatnonzero(members == index)[0])
            found[int(index)] = (bag[pos].permute(1, 2, 0).numpy(), maps[pos], bag_probability)
    crop = next(iter(found.values()))[0].shape[0] if found else fm.crop
    return found, crop / dataset.tiles(0, np.array([0])).shape[1]


def slide_maps(fm: FinalModel, cam, entry, top_k: int, outcome: int
               ) -> tuple[pd.DataFrame, np.ndarray]:
    """The maps of a slide's influential tiles for ``outcome`` (no files), for the pointing
    game: one row per tile (patient_id, stain, magnification, index, x, y, size0,
    crop_fraction) and (k, H, W)."""
    from lncr.explain.scores import influential

    scores, _ = cached_scores(fm, entry)
    top = influential(scores, top_k, fm.cfg.explain.influence, outcome)
    found, fraction = bag_maps(fm, cam, entry, top, outcome)
    table = pd.DataFrame({"patient_id": entry.patient_id, "stain": fm.stain,
                          "magnification": fm.magnification, "index": top["index"].astype(int),
                          "x": top.x, "y": top.y, "size0": top.size0,
                          "crop_fraction": fraction})
    return table, np.stack([found[int(i)][1] for i in table["index"]])


def slide_gradcam(fm: FinalModel, cam, entry, scores: pd.DataFrame, probability: float,
                  outcome: int, top_k: int, folder: Path) -> pd.DataFrame:
    """Explain one slide's influential tiles inside their bags; write its files."""
    from lncr.explain.gradcam import overlay, peak
    from lncr.explain.scores import influential

    top = influential(scores, top_k, fm.cfg.explain.influence, outcome)
    found, fraction = bag_maps(fm, cam, entry, top, outcome)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("tile-*.png"):  # an earlier, other explanation's tiles
        old.unlink()
    rows, maps, tiles, overlays, titles = [], [], [], [], []
    for rank, r in enumerate(top.itertuples(), start=1):
        tile, cam_map, bag_probability = found[int(r.index)]
        over = overlay(tile, cam_map, fm.cfg.explain.cam_overlay_alpha)
        png = folder / f"tile-{rank:02d}-{int(r.index)}.png"
        atomic_save_image(np.hstack([tile, over]), png)
        px, py = peak(cam_map, float(r.size0), float(r.x), float(r.y), fraction)
        rows.append({"rank": rank, "index": int(r.index), "x": int(r.x), "y": int(r.y),
                     "size0": float(r.size0), "peak_x": px, "peak_y": py,
                     "attention": float(r.attention),
                     "relative_attention": float(r.relative_attention),
                     "effect": float(r.effect), "influence": float(r.influence),
                     "chunk": int(r.chunk),
                     "bag_probability": bag_probability, "png": png.name})
        maps.append(cam_map)
        tiles.append(tile)
        overlays.append(over)
        titles.append(f"#{rank} tile {int(r.index)}\nattn×n {r.relative_attention:.2f} "
                      f"effect {r.effect:+.2g}"
                      + ("\nflat: no evidence" if np.isnan(px) else ""))
    target = "CR" if outcome == 1 else "non-CR"
    _gallery(tiles, overlays, titles,
             f"{entry.patient_id} {fm.stain} {fm.magnification}: P(CR) {probability:.2f}, "
             f"label {entry.label}; {cam.method} of P({target})", folder / "gallery.png")
    atomic_save_array(np.stack(maps).astype(np.float32), folder / "cams.npy")
    table = pd.DataFrame(rows)
    atomic_write_text(folder / "cams.csv", table.to_csv(index=False))  # last: marks done
    return table


@locks_output
def explain_gradcam(study: Study, patients: list[str] | None = None, method: str | None = None,
                    target: str | None = None, device: str = "auto",
                    progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Grad-CAM galleries for the influential tiles of the chosen patients' slides."""
    from lncr.explain.gradcam import BagCAM, resolve_target
    from lncr.provenance import package_versions

    out = study.config.output_dir
    chosen, cohort = None, "all"
    if not patients and study.config.explain.cam_patients == "chosen":
        patients, chosen = default_patients(out)
    elif not patients:
        cohort = study.config.explain.cam_patients
    rows, used, cfg = [], [], None
    for fm in final_models_for(study, cohort, patients, device):
        cfg = fm.cfg
        ex = cfg.explain
        name = method or ex.cam_method
        target = target or ex.target
        threshold = fm.threshold
        with BagCAM(fm.model, fm.input_size, name, ex.cam_layer, ex.cam_relu) as cam:
            used.append({"stain": fm.stain, "magnification": fm.magnification,
                         "run": fm.folder, "epoch": fm.epoch, "layer": cam.layer_name,
                         "method": name, "relu": ex.cam_relu, "threshold": threshold})
            for e in fm.entries:
                folder = Layout(out).explain_file("gradcam", fm.stain, fm.magnification,
                                                  e.patient_id, "")
                scores, probability = cached_scores(fm, e)
                outcome = resolve_target(target, probability, threshold)
                key = fm.key(e, method=name, layer=cam.layer_name, relu=ex.cam_relu,
                             outcome=outcome, influence=ex.influence, top_k=ex.top_k,
                             overlay_alpha=ex.cam_overlay_alpha)
                if is_fresh(folder / "cams.csv", key):
                    table = pd.read_csv(folder / "cams.csv")
                else:
                    table = slide_gradcam(fm, cam, e, scores, probability, outcome,
                                          ex.top_k, folder)
                    stamp(folder / "cams.csv", key)
                rows.append(table.assign(
                    stain=fm.stain, magnification=fm.magnification, patient_id=e.patient_id,
                    split=e.split, label=e.label, slide_probability=probability,
                    target="CR" if outcome == 1 else "non-CR"))
                if progress:
                    progress(f"{fm.stain} {fm.magnification} {e.patient_id}")
    if not rows:
        raise ValueError(f"none of the patients {patients} has a slide with a final model")
    table = pd.concat(rows, ignore_index=True)
    first = ["stain", "magnification", "patient_id", "split", "label", "slide_probability",
             "target"]
    table = table[first + [c for c in table.columns if c not in first]]
    folder = out / "explain" / "gradcam"
    write_table(Layout(out).gradcam_table, table)
    atomic_write_json(Layout(out).gradcam_record, {
        "models": used, "target": target, "top_k": cfg.explain.top_k,
        "influence": cfg.explain.influence,
        "checkpoint": cfg.evaluation.checkpoint,
        "patients": patients or sorted(table.patient_id.unique()), "cohort": cohort,
        "chosen": None if chosen is None else chosen.to_dict("records"),
        **study.source,
        "versions": package_versions("torch", "torchvision", "grad-cam", "numpy")})
    table.attrs["folder"] = str(folder)
    return table
