"""Measure lncr's resampling against the authors' (docs/fidelity.md, "Resampling").

The authors resize the 384-px crop of a 512-px tile to 299 px with PIL on the CPU
(``transforms.Resize(299)`` on a PIL image: PIL's bilinear filter, which widens its support
when it shrinks, and rounds to uint8); lncr resizes the uint8 crop on the device as a float
tensor (``F.interpolate(bilinear, antialias=True)``, :class:`lncr.data.inputs.DeviceInput`).
On real tissue tiles of the test slides (every 512-px tile with less than half glass, by the
published rule) this prints:

1. the pixel difference between the two 299-px inputs (0–255 scale): mean and maximum
   absolute difference, with lncr's floats as they are and rounded to uint8 as PIL's are;
2. its effect on one backbone's embedding: EfficientNet-Lite0 with its real ImageNet weights
   (the package lncr's demo uses; no download), pooled 1,280-d features of both inputs —
   cosine similarity and relative L2 distance, beside the median relative distance between
   the embeddings of two different tiles for scale.

    python bench/resampling.py [--slides tests/data/slides]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import openslide
import torch
from PIL import Image

from lncr.data.inputs import DeviceInput, InputGeometry

REPO = Path(__file__).resolve().parents[1]
SLIDES = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs")


def tissue_tiles(path: Path) -> list[np.ndarray]:
    """Every 512-px level-0 tile with at most half glass (grey > 225), as tiling keeps."""
    with openslide.OpenSlide(str(path)) as s:
        w, h = s.dimensions
        tiles = []
        for y in range(0, h - 511, 512):
            for x in range(0, w - 511, 512):
                t = np.asarray(s.read_region((x, y), 0, (512, 512)).convert("RGB"))
                if (np.asarray(Image.fromarray(t).convert("L")) > 225).mean() <= 0.5:
                    tiles.append(t)
    return tiles


def authors_input(tile: np.ndarray) -> np.ndarray:
    """CenterCrop(384) → Resize(299) on a PIL image (torchvision), as uint8."""
    from torchvision import transforms

    chain = transforms.Compose([transforms.CenterCrop(384), transforms.Resize(299)])
    return np.asarray(chain(Image.fromarray(tile)))


def lncr_input(tiles: np.ndarray) -> torch.Tensor:
    """lncr's device path on the same centred crops: (N, 3, 299, 299) floats on 0–255."""
    crop = torch.from_numpy(tiles[:, 64:448, 64:448]).permute(0, 3, 1, 2)[None]
    device = DeviceInput(InputGeometry(crop=384, size=299), [0, 0, 0], [1, 1, 1],
                         "cpu")
    return device(crop)[0] * 255.0


def embed(images: torch.Tensor) -> torch.Tensor:
    """Pooled EfficientNet-Lite0 features of (N, 3, H, W) images on 0–255 (ImageNet
    statistics)."""
    import timm

    from lncr.models.weights import lite0_weights

    with tempfile.TemporaryDirectory() as tmp:
        path = lite0_weights(Path(tmp) / "lite0.pth")
        model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)}).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.cat([model((images[i:i + 16] / 255.0 - mean) / std)
                          for i in range(0, len(images), 16)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=Path, default=REPO / "tests" / "data" / "slides")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tiles = np.stack([t for name in SLIDES for t in tissue_tiles(args.slides / name)])
    ours = lncr_input(tiles)
    theirs = torch.from_numpy(np.stack([authors_input(t) for t in tiles])).permute(0, 3, 1, 2)
    diff = (ours - theirs.float()).abs()
    rounded = (ours.round().clamp(0, 255) - theirs.float()).abs()
    print(f"{len(tiles)} tissue tiles of {', '.join(SLIDES)}, 384 → 299 px")
    print(f"pixels (0-255): lncr floats vs PIL: mean |d| {diff.mean():.3f}, max {diff.max():.2f};"
          f" rounded to uint8: mean {rounded.mean():.3f}, max {rounded.max():.0f}, "
          f"{(rounded > 0).float().mean():.1%} of values differ")
    a, b = embed(theirs.float()), embed(ours)
    cosine = torch.nn.functional.cosine_similarity(a, b)
    relative = (a - b).norm(dim=1) / a.norm(dim=1)
    between = torch.cdist(a, a)[~torch.eye(len(a), dtype=torch.bool)] / a.norm(dim=1).mean()
    print(f"EfficientNet-Lite0 (ImageNet) embeddings: cosine similarity mean {cosine.mean():.5f},"
          f" min {cosine.min():.5f}; relative L2 distance mean {relative.mean():.4f}, max "
          f"{relative.max():.4f}; between two different tiles: median "
          f"{between.median():.3f} (ratio {between.median() / relative.mean():.0f}x)")


if __name__ == "__main__":
    main()
