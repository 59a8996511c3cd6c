"""One short GPU run (under 10 minutes on one H100-class GPU) for the cost table of
docs/tutorial.md, "What the published cohort costs":

1. the published bag model (2,048-d ResNet-50 features → 512, 8 heads, feed-forward 2,048,
   2 layers, dropout 0.1, SGD with momentum), stacked groups of 1, 8, 40 and 240 units, bags
   of 32 tiles, one bag per unit and step: unit-steps per second and peak memory, in fp32 and
   bf16 autocast (:mod:`lncr.training.stacked_head`, as ``sweep.group_size`` trains them);
2. the embedding rate of ResNet-50 at 299 px and ViT-B/16 at 384 px (forward only, batches of
   256, channels-last, fp32 and bf16), beside what the tile loader delivers: PNG tiles read
   from a tile store and decoded by 8 loader processes (tiles per second).

    python bench/gpu_stacked.py [--quick]   # --quick: fewer steps (a smoke test on a CPU)

Random weights: the rates do not depend on them, and the machine needs no download.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def published_heads(group: int, device: torch.device):
    """Stacked parameters of ``group`` published heads, built one at a time on the device."""
    from lncr.models.mil import build_head_mil
    from lncr.training.stacked_head import HeadShape

    stacked, shape = None, None
    for i in range(group):
        head = build_head_mil("resnet50", 2048, embedding_dim=512, layers=2, heads=8,
                              feedforward_dim=2048, dropout=0.1).to(device)
        if stacked is None:
            shape = HeadShape.of(head)
            stacked = {n: torch.empty((group, *p.shape), device=device)
                       for n, p in head.named_parameters()}
        with torch.no_grad():
            for n, p in head.named_parameters():
                stacked[n][i].copy_(p)
    return {n: t.requires_grad_(True) for n, t in stacked.items()}, shape


def head_rate(group: int, steps: int, bf16: bool, device: torch.device, bag: int = 32
              ) -> tuple[float, float]:
    """(unit-steps per second, peak GiB) of a stacked group of published heads."""
    from lncr.training.stacked_head import draw_masks, stacked_forward

    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    params, shape = published_heads(group, device)
    optimiser = torch.optim.SGD(list(params.values()), lr=1e-3, momentum=0.9,
                                weight_decay=1e-4, foreach=True)
    generators = [torch.Generator(device).manual_seed(i) for i in range(group)]
    x = torch.randn(group, 1, bag, 2048, device=device)
    y = torch.ones(group, 1, device=device)
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            t0 = time.perf_counter()
        masks = draw_masks(shape, generators, 1, bag, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, _ = stacked_forward(params, x, shape, masks)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        optimiser.zero_grad(set_to_none=True)
        loss.mean(dim=1).sum().backward()
        optimiser.step()
    sync(device)
    rate = group * steps / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    del params, optimiser
    return rate, peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embed_rate(name: str, size: int, bf16: bool, device: torch.device, batches: int,
               batch: int = 256) -> float:
    """Tiles per second through a backbone (forward only)."""
    from lncr.models.backbones import build_backbone

    model = build_backbone(name, 512).to(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(batches + 2):
            if i == 2:
                sync(device)
                t0 = time.perf_counter()
            model(x)
    sync(device)
    return batch * batches / (time.perf_counter() - t0)


def loader_rate(tiles: int, workers: int) -> float:
    """Tiles per second the bag loader decodes from PNG tile stores (512 px)."""
    from torch.utils.data import DataLoader

    from lncr.data.bags import BagDataset, SlideEntry, collate_bags
    from lncr.tiling.store import TileStoreWriter

    folder = Path(tempfile.mkdtemp(prefix="lncr-gpu-loader-"))
    rng = np.random.default_rng(0)
    entries = []
    for s in range(8):
        path = folder / f"S{s}.tiles.zip"
        with TileStoreWriter(path, "png") as store:
            base = rng.integers(120, 230, (512, 512, 3), dtype=np.uint8)
            for i in range(tiles // 8):
                store.add(np.roll(base, i, axis=0), i * 512, 0, 512, 0.1)
            store.meta = {"settings": {"tile_size": 512}}
        entries.append(SlideEntry(f"S{s}", "HE", "20x", str(path), s % 2, "train", tiles // 8))
    data = BagDataset(entries, bag_size=32, train=True, seed=0, crop=299)
    loader = DataLoader(data, batch_size=1, sampler=list(range(len(entries))) * 4,
                        num_workers=workers, collate_fn=collate_bags)
    t0 = time.perf_counter()
    seen = sum(bags.shape[1] for bags, *_ in loader)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    groups = (1, 8) if args.quick else (1, 8, 40, 240)
    steps = 3 if args.quick else 20
    for bf16 in (False, True):
        for group in groups:
            rate, peak = head_rate(group, steps, bf16, device)
            print(f"published head, {'bf16' if bf16 else 'fp32'}, group {group:3d}: "
                  f"{rate:9.1f} unit-steps/s ({1000 * group / rate:7.2f} ms a group step), "
                  f"peak {peak:.1f} GiB")
    batches = 2 if args.quick else 20
    for arch, size in (("resnet50", 299), ("timm:vit_base_patch16_384", 384)):
        for bf16 in (False, True):
            rate = embed_rate(arch, size, bf16, device, batches, 16 if args.quick else 256)
            print(f"embedding {arch} at {size} px, {'bf16' if bf16 else 'fp32'}: "
                  f"{rate:8.0f} tiles/s")
    workers = 2 if args.quick else 8
    print(f"tile loader (PNG stores, 512 px, crop 299, {workers} processes): "
          f"{loader_rate(64 if args.quick else 512, workers):.0f} tiles/s")


if __name__ == "__main__":
    main()
