"""Where the model looked: tile scores painted on the slide, and a GeoJSON QuPath can import.

- :func:`heatmap_figure`: the slide's thumbnail with every scored tile filled by its score
  (a perceptually uniform colour map, semi-transparent, each tile outlined) and a colour bar;
  PNG.
- :func:`geojson`: one QuPath *detection* per tile — a square polygon in level-0 pixels with
  the scores as measurements — as a GeoJSON ``FeatureCollection`` (File → Import objects in
  QuPath 0.4+ opens it over the same slide).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lncr.fileio import atomic_save_figure

MEASUREMENTS = ("attention", "relative_attention", "effect", "chunk_probability")


#: QuPath colours (RGB) of the classes lncr gives tiles.
CLASS_COLOURS = {"lncr influential (CR)": [46, 160, 67], "lncr influential (non-CR)": [214, 39, 40],
                 "lncr tile": [150, 150, 150]}


def geojson(scores: pd.DataFrame, name: str = "lncr tile",
            classes: dict[int, str] | None = None,
            offset: tuple[float, float] = (0.0, 0.0)) -> dict:
    """A GeoJSON FeatureCollection of the scored tiles in QuPath's pixel frame: level-0
    pixels less ``offset`` (the corner QuPath crops to, :func:`lncr.explain.heatmap_run.qupath_frame`); each tile
    carries a QuPath classification: ``classes[tile index]`` (the influential ones) or
    ``lncr tile``."""
    features = []
    classes = classes or {}
    for r in scores.itertuples():
        x, y, s = float(r.x) - offset[0], float(r.y) - offset[1], float(r.size0)
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        label = classes.get(int(r.index), "lncr tile")
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection", "name": f"{name} {int(r.index)}",
                           "classification": {"name": label,
                                              "color": CLASS_COLOURS.get(label, [0, 0, 0])},
                           "measurements": {m: float(getattr(r, m)) for m in MEASUREMENTS
                                            if hasattr(r, m)}}})
    return {"type": "FeatureCollection", "features": features}


def heatmap_figure(slide_path: str | Path, scores: pd.DataFrame, out: Path, title: str,
                   column: str = "relative_attention", max_side: int = 1600) -> Path:
    """The scores of ``column`` painted over the slide thumbnail, with a colour bar."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from lncr.figures import pyplot
    from lncr.slides.reader import open_slide

    plt = pyplot()

    with open_slide(slide_path) as slide:
        thumb, down = slide.thumbnail(max_side)
    values = scores[column].to_numpy(float)
    fig, ax = plt.subplots(figsize=(8, 8 * thumb.shape[0] / thumb.shape[1] + 0.8))
    ax.imshow(thumb)
    boxes = [Rectangle((x / down, y / down), s / down, s / down)
             for x, y, s in zip(scores.x, scores.y, scores.size0)]
    cmap = "coolwarm" if column == "effect" else "viridis"
    limit = float(np.abs(values).max()) if column == "effect" and len(values) else None
    patches = PatchCollection(boxes, cmap=cmap, alpha=0.55, edgecolor="white", linewidth=0.3)
    patches.set_array(values)
    if limit:
        patches.set_clim(-limit, limit)
    ax.add_collection(patches)
    fig.colorbar(patches, ax=ax, fraction=0.03, pad=0.01, label=column.replace("_", " "))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
