"""Which limits training here: the data loader or the model step?

Reports, for one architecture and input size on the current machine, in one run:
  loader   tiles/s delivered by the DataLoader (decode + crop + augment in workers, uint8)
  step     tiles/s through a full training step (device-side resize/jitter/normalise,
           forward, backward, optimiser step) on bags already in memory
and their ratio: loader/step < 1 means training waits for data (add loader workers, or tile
with JPEG); > 1 means the model is the bottleneck.

Tiles come from a tiled study (--study, its first stain × magnification with tiles) or, by
default, from a small phantom tiled into a temporary folder.

    python bench/train_throughput.py                                  # resnet18, CPU-sized
    python bench/train_throughput.py --architecture resnet50 --tile-size 512 \
        --crop-size 384 --input-size 299 --precision fp16 --device cuda   # the published size
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lncr.data.bags import BagDataset, EpochSampler
from lncr.data.distributed import resolve_device
from lncr.data.inputs import DeviceInput, input_geometry
from lncr.data.precision import autocast_dtype
from lncr.study.config import TrainingSettings
from lncr.study.validate import Study
from lncr.training.loop import build_model, loader, make_optimiser


def phantom_entries(tile_size: int, root: Path):
    from lncr.data.entries import study_entries
    from lncr.study.validate import load_study, save_study_record
    from lncr.synth.cohort import SynthSettings, synthesize
    from lncr.tiling.run import tile_study

    synthesize(root, SynthSettings(patients=8, external=0, seed=1, size="small",
                                   stains=("HE",)), workers=2)
    sets = [f"tiling.tile_size={tile_size}", "magnification.powers=[20]"]
    save_study_record(load_study(root / "study.yaml", sets))
    tile_study(Study.load(root / "study.yaml", sets), workers=2)
    return study_entries(Study.load(root / "study.yaml", sets), "HE", "20x")


def measure_loader(entries, settings, geometry, workers: int, device, seconds: float) -> float:
    ds = BagDataset(entries, settings.bag_size, train=True, seed=0, crop=geometry.crop,
                    augment=True, jitter=settings.colour_jitter)
    sampler = EpochSampler(len(entries), 0)
    dl = loader(ds, sampler, settings.bags_per_step, workers, device)
    tiles, epoch, start = 0, 0, None
    while True:
        sampler.set_epoch(epoch)
        for bags, *_ in dl:
            if start is None:  # workers started, first batch in
                start = time.perf_counter()
                continue
            tiles += bags.shape[0] * bags.shape[1]
            if time.perf_counter() - start > seconds:
                return tiles / (time.perf_counter() - start)
        epoch += 1


def measure_step(settings, geometry, device, precision: str, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(settings).to(device).train()
    optimiser = make_optimiser(model, settings.architecture, settings)
    amp = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    inputs = DeviceInput(geometry, [0.5] * 3, [0.2] * 3, device)
    b, n = settings.bags_per_step, settings.bag_size
    bags = torch.randint(0, 256, (b, n, 3, geometry.crop, geometry.crop), dtype=torch.uint8)
    factors = torch.ones(b, n, 3)
    labels = torch.ones(b, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits, _ = model(inputs(bags, factors))
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(2):  # warm-up (allocator, cuDNN autotuning)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * b * n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, help="a tiled study (default: a temporary phantom)")
    ap.add_argument("--stain", default="HE")
    ap.add_argument("--magnification", default="20x")
    ap.add_argument("--architecture", default="resnet18")
    ap.add_argument("--tile-size", type=int, default=128)
    ap.add_argument("--crop-size", type=int, default=384, help="for 512-px tiles (scaled)")
    ap.add_argument("--input-size", type=int, default=299, help="for 512-px tiles (scaled)")
    ap.add_argument("--bag-size", type=int, default=16)
    ap.add_argument("--bags-per-step", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    device = resolve_device(args.device)
    settings = TrainingSettings(architecture=args.architecture, pretrained=False,
                                bag_size=args.bag_size, bags_per_step=args.bags_per_step,
                                crop_size=args.crop_size, input_size=args.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        if args.study:
            from lncr.data.entries import study_entries

            loaded = Study.load(args.study)
            cfg, entries = loaded.config, study_entries(loaded, args.stain, args.magnification)
            tile_size = cfg.tiling.tile_size
        else:
            tile_size = args.tile_size
            entries = phantom_entries(tile_size, Path(tmp) / "phantom")
        geometry = input_geometry(settings, tile_size)
        load = measure_loader(entries, settings, geometry, args.workers, device, args.seconds)
        step = measure_step(settings, geometry, device, args.precision, args.steps)
    precision = autocast_dtype(args.precision, device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{args.architecture}, tiles {tile_size} px -> crop {geometry.crop} -> input "
          f"{geometry.size} px, bag {args.bag_size} x {args.bags_per_step}, precision "
          f"{str(precision).replace('torch.', '') if precision else 'fp32'}")
    print(f"loader ({args.workers} workers): {load:9.1f} tiles/s")
    print(f"model step:           {step:9.1f} tiles/s")
    limit = "the data loader" if load < step else "the model step"
    print(f"loader/step = {load / step:.2f}: {limit} limits training")


if __name__ == "__main__":
    main()
