"""``lncr explain cluster``: DCCS clusters of the development cohort's influential tiles, their
t-SNE map, galleries and association with the outcome.

For each chosen final model (stain × magnification), the influential tiles (``explain.top_k``
per slide, from the cached tile scores) of the **development** patients are centre-cropped to
``explain.cluster_crop`` (given for 512-px tiles), resized to ``explain.cluster_tile_size``
— the authors' CenterCrop(384) → Resize(224) — and clustered with DCCS (:mod:`lncr.explain.dccs`,
``explain.clusters`` clusters, ``explain.style_dim`` style dimensions,
``explain.cluster_epochs``). External patients never enter. Writes
``<output_dir>/explain/clusters/<stain>/<mag>/``:

- ``tiles.csv`` — every clustered tile: patient, split, label, tile index, level-0 box, rank,
  cluster, its probability, t-SNE coordinates (and, on a phantom, the planted tissue class);
  written last, it marks the unit done;
- ``association.csv`` — per cluster: tiles from CR and non-CR patients, the share of each
  outcome's tiles in the cluster, odds ratio and two-sided Fisher exact p (cluster vs the rest ×
  outcome; tiles are treated as independent), and the patient-level view: the mean proportion
  of a patient's influential tiles in the cluster among CR and among non-CR patients with a
  two-sided Mann-Whitney p (patients as the unit); ``association.png`` draws the proportions;
- ``tsne-cluster.png``, ``tsne-outcome.png`` — t-SNE of the latent ``[z_s, z_c]``;
- ``galleries.png`` — the 10 most typical tiles of each cluster (highest cluster probability
  among the tiles assigned to it);
- ``dccs.pt`` (model), ``history.csv`` (losses per epoch), ``cluster.json`` (settings, the
  chi-square test of clusters × outcome, phantom scores, versions).

``tiles.csv`` carries the key of what made it (model, checkpoint, DCCS settings); a re-run with
other settings or after retraining clusters again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.explain.models import (
    FinalModel,
    cached_scores,
    final_models_for,
    is_fresh,
    slide_paths,
    stamp,
)
from lncr.fileio import (
    atomic_save_figure,
    atomic_save_torch,
    atomic_write_json,
    atomic_write_text,
)
from lncr.layout import Layout
from lncr.locks import locks_output
from lncr.study.validate import Study

GALLERY = 10


def influential_tiles(fm: FinalModel, top_k: int) -> pd.DataFrame:
    """The development patients' influential tiles of one final model."""
    from lncr.explain.heatmap_run import influential_rows

    rows = []
    for e in fm.entries:
        scores, probability = cached_scores(fm, e)
        rows.append(influential_rows(fm, e, scores, probability, top_k).assign(store=e.store))
    if not rows:
        raise ValueError(f"{fm.stain} {fm.magnification}: no development slides to cluster")
    return pd.concat(rows, ignore_index=True)


def load_tiles(table: pd.DataFrame, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """(N, size, size, 3) uint8: the tiles of ``table`` (store, index), their centred
    ``crop_fraction`` of the side, resized."""
    import cv2

    from lncr.tiling.store import TileStore

    out = np.empty((len(table), size, size, 3), dtype=np.uint8)
    for store_path, part in table.groupby("store", sort=False):
        with TileStore(store_path) as store:
            for row, index in zip(part.index, part["index"]):
                tile = store[int(index)]
                side = max(1, min(tile.shape[0], round(tile.shape[0] * crop_fraction)))
                top = (tile.shape[0] - side) // 2
                left = (tile.shape[1] - side) // 2
                tile = tile[top:top + side, left:left + side]
                out[table.index.get_loc(row)] = cv2.resize(tile, (size, size),
                                                           interpolation=cv2.INTER_AREA)
    return out


def dccs_config(ex, stain: str, n_tiles: int):
    """The DCCS settings of ``explain`` for one stain (the authors' brightness jitter is 0.1
    for PAS, 0.4 otherwise)."""
    from lncr.explain.dccs import LIGHT_AUGMENT, PUBLISHED_AUGMENT, DCCSConfig

    augment = dict(LIGHT_AUGMENT if ex.cluster_augment == "light" else PUBLISHED_AUGMENT)
    if ex.cluster_augment == "published" and stain == "PAS":
        augment["brightness"] = 0.1
    return DCCSConfig(clusters=ex.clusters, style_dim=ex.style_dim, epochs=ex.cluster_epochs,
                      lr=ex.cluster_lr, batch_size=min(ex.cluster_batch_size, n_tiles),
                      encoder=ex.cluster_encoder, augment=augment, seed=ex.seed)


def cluster_crop_fraction(ex) -> float:
    """``explain.cluster_crop`` (px of a 512-px tile) as a fraction of the tile's side."""
    return min(1.0, ex.cluster_crop / 512)


def association(tiles: pd.DataFrame, clusters: int) -> tuple[pd.DataFrame, dict]:
    """Per-cluster outcome association (tile and patient level) and the overall chi-square."""
    from scipy.stats import chi2_contingency, fisher_exact, mannwhitneyu

    cr, non = tiles.label == 1, tiles.label == 0
    per_patient = (pd.crosstab(tiles.patient_id, tiles.cluster, normalize="index")
                   .reindex(columns=range(clusters), fill_value=0.0))
    labels = tiles.groupby("patient_id").label.first().reindex(per_patient.index)
    rows = []
    for k in range(clusters):
        inside = tiles.cluster == k
        a, b = int((inside & cr).sum()), int((inside & non).sum())
        c, d = int((~inside & cr).sum()), int((~inside & non).sum())
        odds, p = fisher_exact([[a, b], [c, d]]) if (a + b) and (c + d) else (np.nan, np.nan)
        p_cr, p_non = per_patient.loc[labels == 1, k], per_patient.loc[labels == 0, k]
        mw = mannwhitneyu(p_cr, p_non).pvalue if len(p_cr) and len(p_non) else np.nan
        rows.append({"cluster": k, "tiles": a + b, "tiles_cr": a, "tiles_noncr": b,
                     "share_of_cr_tiles": a / max(cr.sum(), 1),
                     "share_of_noncr_tiles": b / max(non.sum(), 1),
                     "odds_ratio_cr": float(odds), "fisher_p": float(p),
                     "patient_mean_cr": float(p_cr.mean()) if len(p_cr) else np.nan,
                     "patient_mean_noncr": float(p_non.mean()) if len(p_non) else np.nan,
                     "mann_whitney_p": float(mw)})
    table = pd.DataFrame(rows)
    used = table[table.tiles > 0]
    overall = {"test": "chi-square, clusters × outcome (tiles)", "statistic": np.nan,
               "dof": 0, "p_value": np.nan}
    if len(used) >= 2 and cr.any() and non.any():
        chi2, p, dof, _ = chi2_contingency(used[["tiles_cr", "tiles_noncr"]].to_numpy())
        overall.update(statistic=float(chi2), dof=int(dof), p_value=float(p))
    return table, overall


def _scatter(xy: np.ndarray, values, names: dict, title: str, path: Path) -> None:
    from lncr.figures import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 5))
    cmap = plt.get_cmap("tab10")
    for i, (value, name) in enumerate(names.items()):
        mask = np.asarray(values) == value
        ax.scatter(xy[mask, 0], xy[mask, 1], s=9, color=cmap(i % 10), label=name, alpha=0.8)
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _galleries(images: np.ndarray, tiles: pd.DataFrame, probability: np.ndarray,
               clusters: int, title: str, path: Path) -> pd.DataFrame:
    from lncr.figures import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(clusters, GALLERY, figsize=(GALLERY * 0.9, clusters * 1.0 + 0.4),
                             squeeze=False)
    typical = []
    for k in range(clusters):
        members = np.flatnonzero(tiles.cluster.to_numpy() == k)
        order = members[np.argsort(-probability[members, k], kind="stable")][:GALLERY]
        typical += [{"cluster": k, "position": j, "row": int(i)} for j, i in enumerate(order)]
        cr = (tiles.label.to_numpy()[members] == 1).mean() if len(members) else float("nan")
        for j in range(GALLERY):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(order):
                ax.imshow(images[order[j]])
        axes[k, 0].set_ylabel(f"{k}: n={len(members)}\nCR {cr:.0%}", fontsize=7, rotation=0,
                              ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return pd.DataFrame(typical)


def _association_figure(table: pd.DataFrame, title: str, path: Path) -> None:
    from lncr.figures import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.2))
    k = np.arange(len(table))
    ax.bar(k - 0.2, table.patient_mean_cr, 0.4, label="CR patients")
    ax.bar(k + 0.2, table.patient_mean_noncr, 0.4, label="non-CR patients")
    for i, p in zip(k, table.fisher_p):
        if np.isfinite(p):
            ax.text(i, ax.get_ylim()[1] * 0.02 + max(table.patient_mean_cr.iloc[i],
                                                     table.patient_mean_noncr.iloc[i]),
                    f"p={p:.2g}", ha="center", fontsize=6)
    ax.set_xticks(k, [str(c) for c in table.cluster])
    ax.set_xlabel("cluster")
    ax.set_ylabel("mean share of a patient's\ninfluential tiles")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def tsne(z: np.ndarray, seed: int, iterations: int = 1000) -> np.ndarray:
    """2-D t-SNE of the latent (scikit-learn; perplexity capped for small sets)."""
    from sklearn.manifold import TSNE

    n = len(z)
    if n < 4:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                max_iter=iterations).fit_transform(z)


def _phantom_scores(fm: FinalModel, tiles: pd.DataFrame, cluster: np.ndarray) -> dict:
    """On a phantom, the clusters scored against the planted tile classes (and the classes
    added to ``tiles``); nothing on a real study."""
    from lncr.explain.cluster_metrics import clustering_scores
    from lncr.explain.phantom_truth import PhantomTruth

    truth = PhantomTruth.for_slide(slide_paths(fm.cfg.output_dir)[(tiles.patient_id.iloc[0],
                                                                    fm.stain)])
    if truth is None:
        return {}
    classes = []
    for (patient, _), part in tiles.groupby(["patient_id", "stain"], sort=False):
        classes += list(zip(part.index, truth.tile_classes(patient, fm.stain, part.x, part.y,
                                                           part.size0)))
    tiles["planted_class"] = pd.Series(dict(classes))
    return {"phantom": {"dccs": clustering_scores(tiles.planted_class, cluster),
                        "classes": tiles.planted_class.value_counts().to_dict()}}


def cluster_model(fm: FinalModel, device: str, log: Callable[[str], None] | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Cluster one final model's development influential tiles; write its folder;
    ``progress(what, epoch, epochs)`` after each DCCS epoch."""
    import torch

    from lncr.data.distributed import resolve_device
    from lncr.explain.dccs import assign, fit_dccs
    from lncr.provenance import package_versions

    cfg = fm.cfg
    ex = cfg.explain
    folder = Layout(cfg.output_dir).clusters(fm.stain, fm.magnification)
    key = fm.key(explain=ex.model_dump(mode="json"))
    if is_fresh(folder / "tiles.csv", key):
        return {"stain": fm.stain, "magnification": fm.magnification, "folder": str(folder),
                "tiles": int(len(pd.read_csv(folder / "tiles.csv"))), "reused": True}
    tiles = influential_tiles(fm, ex.top_k)
    images = load_tiles(tiles, ex.cluster_tile_size, cluster_crop_fraction(ex))
    config = dccs_config(ex, fm.stain, len(tiles))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    name = f"{fm.stain} {fm.magnification}"

    def epoch_done(epoch: int, losses: dict[str, float]) -> None:
        if progress:
            loss = ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
            progress(f"DCCS {name} ({len(tiles)} tiles; {loss})", epoch + 1, config.epochs)

    model, history = fit_dccs(x, config, str(resolve_device(device)), epoch_done)
    z, cluster = assign(model, x)
    probability = z[:, ex.style_dim:]
    tiles = tiles.assign(cluster=cluster, cluster_probability=probability.max(axis=1))
    xy = tsne(z, ex.seed, ex.tsne_iterations)
    tiles["tsne_x"], tiles["tsne_y"] = xy[:, 0], xy[:, 1]
    extra = _phantom_scores(fm, tiles, cluster)
    folder.mkdir(parents=True, exist_ok=True)
    table, overall = association(tiles, ex.clusters)
    _scatter(xy, tiles.cluster, {k: f"cluster {k}" for k in range(ex.clusters)},
             f"{name}: t-SNE of DCCS latents, by cluster", folder / "tsne-cluster.png")
    _scatter(xy, tiles.label, {1: "CR", 0: "non-CR"},
             f"{name}: t-SNE of DCCS latents, by outcome", folder / "tsne-outcome.png")
    typical = _galleries(images, tiles, probability, ex.clusters,
                         f"{name}: the {GALLERY} most typical tiles per cluster",
                         folder / "galleries.png")
    _association_figure(table, f"{name}: clusters by outcome (Fisher p on tiles)",
                        folder / "association.png")
    atomic_write_text(folder / "association.csv", table.to_csv(index=False))
    atomic_write_text(folder / "history.csv", pd.DataFrame(history).rename_axis(
        "epoch").to_csv())
    atomic_write_text(folder / "typical.csv", typical.to_csv(index=False))
    atomic_save_torch({"model": model.state_dict(), "config": config.to_dict(),
                       "channels": 3, "size": ex.cluster_tile_size}, folder / "dccs.pt")
    atomic_write_json(folder / "cluster.json", {
        "stain": fm.stain, "magnification": fm.magnification, "run": fm.folder,
        "tiles": len(tiles), "patients": int(tiles.patient_id.nunique()),
        "dccs": config.to_dict(), "chi_square": overall, "final_losses": history[-1],
        **extra, "versions": package_versions("torch", "scikit-learn", "scipy", "numpy")})
    atomic_write_text(folder / "tiles.csv", tiles.drop(columns=["store"]).to_csv(index=False))
    stamp(folder / "tiles.csv", key)
    if log:
        log(f"{name}: {len(tiles)} tiles in {ex.clusters} clusters; chi-square p "
            f"{overall['p_value']:.3g}")
    return {"stain": fm.stain, "magnification": fm.magnification, "folder": str(folder),
            "tiles": len(tiles), "reused": False, "chi_square_p": overall["p_value"], **extra}


@locks_output
def explain_clusters(study: Study, stains: list[str] | None = None,
                     magnifications: list[str] | None = None,
                     device: str = "auto", log: Callable[[str], None] | None = None,
                     progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """DCCS clustering for each chosen final model; one summary dict per model
    (``progress(what, epoch, epochs)`` per training epoch)."""
    return [cluster_model(fm, device, log, progress)
            for fm in final_models_for(study, "development", None, device, stains,
                                       magnifications)]
