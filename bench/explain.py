"""Per-slide cost of `lncr explain heatmap`'s tile scores and `lncr explain gradcam`'s maps on
the CPU, against the naive ways.

    python bench/explain.py [--architecture resnet18] [--input-size 256] [--chunk 16] [--top-k 8]

Scores every tile of each 20x slide of a small phantom (attention in its chunk and the
leave-one-out effect): lncr embeds every tile once and re-runs only the bag head for the
leave-one-out bags; the naive way runs every leave-one-out bag through the whole model. Reports
seconds per slide for both, their ratio, and the largest difference between their effects
(they must agree).

Grad-CAM of the slide's ``top-k`` influential tiles: lncr runs one forward + backward pass per
chunk holding an influential tile and reads every tile's map from it; the naive way runs one
pass per influential tile. Reports seconds per slide for both (maps must agree).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lncr.study.validate import Study

TILES = ["tiling.tile_size=128", "magnification.powers=[20]", "tiling.encoding=jpeg"]


def naive_effects(model, inputs, dataset, n: int, chunk: int) -> np.ndarray:
    """Leave-one-out effects by full forward passes of every reduced bag."""
    chunks = math.ceil(n / chunk)
    effect = np.zeros(n)
    with torch.no_grad():
        for c in range(chunks):
            members = np.arange(n)[c::chunks]
            bag, _, _, _ = dataset.bag(0, members, epoch=0)
            full = torch.sigmoid(model(inputs(bag[None]))[0])[0]
            for j, tile in enumerate(members):
                rest = np.delete(members, j)
                b, _, _, _ = dataset.bag(0, rest, epoch=0)
                effect[tile] = float(full - torch.sigmoid(model(inputs(b[None]))[0])[0])
    return effect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architecture", default="resnet18")
    ap.add_argument("--input-size", type=int, default=256, help="for 512-px tiles (scaled)")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from lncr.data.bags import BagDataset
    from lncr.data.entries import study_entries
    from lncr.data.inputs import DeviceInput, InputGeometry
    from lncr.explain.gradcam import BagCAM
    from lncr.explain.scores import influential, slide_scores
    from lncr.models.mil import build_mil
    from lncr.study.validate import load_study, save_study_record
    from lncr.synth.cohort import SynthSettings, synthesize
    from lncr.tiling.run import tile_study

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "phantom"
        synthesize(folder, SynthSettings(patients=4, external=0, seed=1, size="small",
                                         stains=("HE",)), workers=2)
        study = folder / "study.yaml"
        save_study_record(load_study(study, TILES))
        tile_study(Study.load(study, TILES), workers=2)
        entries = study_entries(Study.load(study, TILES), "HE", "20x")
        torch.manual_seed(0)
        model = build_mil(args.architecture, 32, 2, 4, None, 64, 0.0).eval()
        size = round(args.input_size * 128 / 512)
        inputs = DeviceInput(InputGeometry(96, size), [0.5] * 3, [0.25] * 3, "cpu")
        ours, naive, worst = [], [], 0.0
        cam_ours, cam_naive, cam_worst = [], [], 0.0
        cam = BagCAM(model, size)
        for entry in entries[:args.slides]:
            t0 = time.perf_counter()
            scores, _ = slide_scores(model, inputs, entry, 96, args.chunk)
            ours.append(time.perf_counter() - t0)
            dataset = BagDataset([entry], 1, train=False, crop=96)
            t0 = time.perf_counter()
            effect = naive_effects(model, inputs, dataset, entry.n_tiles, args.chunk)
            naive.append(time.perf_counter() - t0)
            worst = max(worst, float(np.abs(effect - scores.effect.to_numpy()).max()))
            top = influential(scores, args.top_k)
            chunks = math.ceil(entry.n_tiles / args.chunk)
            t0 = time.perf_counter()
            maps = {}
            for c in sorted(set(top.chunk)):
                members = np.arange(entry.n_tiles)[c::chunks]
                bag, _, _, _ = dataset.bag(0, members, epoch=0)
                out, _ = cam(inputs(bag[None])[0], 1)
                for i in top.loc[top.chunk == c, "index"]:
                    maps[int(i)] = out[int(np.flatnonzero(members == i)[0])]
            cam_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i, c in zip(top["index"], top.chunk):
                members = np.arange(entry.n_tiles)[c::chunks]
                bag, _, _, _ = dataset.bag(0, members, epoch=0)
                out, _ = cam(inputs(bag[None])[0], 1)
                one = out[int(np.flatnonzero(members == i)[0])]
                cam_worst = max(cam_worst, float(np.abs(one - maps[int(i)]).max()))
            cam_naive.append(time.perf_counter() - t0)
        tiles = np.mean([e.n_tiles for e in entries[:args.slides]])
        print(f"{args.architecture}, {size}-px inputs, chunks of {args.chunk}, "
              f"{len(ours)} slides of ~{tiles:.0f} tiles at 20x (CPU, 2 threads)")
        print(f"  lncr: {np.mean(ours):.2f} s per slide; naive: {np.mean(naive):.2f} s per slide "
              f"({np.mean(naive) / np.mean(ours):.1f}× slower); largest effect difference "
              f"{worst:.1e}")
        print(f"  Grad-CAM of the top {args.top_k} tiles: lncr {np.mean(cam_ours):.2f} s per "
              f"slide; one pass per tile {np.mean(cam_naive):.2f} s "
              f"({np.mean(cam_naive) / np.mean(cam_ours):.1f}× slower); largest map difference "
              f"{cam_worst:.1e}")
        print(f"  explain one slide (scores + Grad-CAM): "
              f"{np.mean(ours) + np.mean(cam_ours):.2f} s")


if __name__ == "__main__":
    main()
