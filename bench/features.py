"""What cached features buy: one sweep unit on cached features vs the same unit end to end
with the backbone frozen, side by side in one run, and embedding throughput per encoder.

Reports, in one run on the current machine:
  embed       seconds and tiles/s to embed every tile of the study's slides once (the
              demo's encoder, EfficientNet-Lite0 with its packaged ImageNet weights, and the
              demo's views)
  unit        seconds of one sweep unit at the demo's settings (30 epochs, same seed and
              slides) end to end with the backbone frozen and on cached features, per bag
              size of the demo's grid, their ratio, and the ratio over the grid (target
              ≥ 20×)
  head        milliseconds of one training step and one evaluation pass of the published
              bag model (512 wide, 8 heads, FF 2048) on ResNet-50's 2,048 features, bag 30,
              one thread: what the published grid costs on cached features
  throughput  encoder tiles/s (forward only, batch 64) for ResNet-18, ResNet-50 and a
              ViT-B/16 (random weights: the speed does not depend on them), and with
              --device cuda a ViT-L/16 with AMP and the data loader's tiles/s beside it
              (the loader must deliver ≥ 2× what the encoder consumes)

    python bench/features.py                      # CPU, the demo's settings, ~10 minutes
    python bench/features.py --device cuda --throughput-only --loader-workers 8   # a GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def demo_settings() -> list[str]:
    """The demo's tiling, training and embedding settings (lncr.pipeline), HE at 10x."""
    from lncr.pipeline import DEMO_SWEEP, DEMO_TILING, DEMO_TRAINING

    embedding = [s for s in DEMO_SWEEP if s.startswith("embedding.")]
    return (DEMO_TILING + DEMO_TRAINING + embedding
            + ["magnification.powers=[10]", "training.architecture=timm:tf_efficientnet_lite0"])


def phantom(root: Path, patients: int):
    """A demo-like phantom (HE only), tiled and validated: the study."""
    from lncr.study.validate import Study, load_study, save_study_record
    from lncr.synth.cohort import SynthSettings, synthesize
    from lncr.tiling.run import tile_study

    synthesize(root, SynthSettings(patients=patients, external=0, seed=1, size="small",
                                   stains=("HE",), signal=1.9), workers=2)
    settings = demo_settings()
    save_study_record(load_study(root / "study.yaml", settings))
    tile_study(Study.load(root / "study.yaml", settings), workers=2)
    return Study.load(root / "study.yaml", settings)


def unit_costs(study, weights: Path, device: str, bag_sizes: list[int]) -> dict:
    """Embed once, then per bag size one unit on cached features and one end to end."""
    from lncr.data.entries import study_entries
    from lncr.data.inputs import IMAGENET_STATS, input_geometry
    from lncr.features.embed import FeatureCache, embed_entries
    from lncr.features.spec import run_features
    from lncr.layout import Layout
    from lncr.training.loop import RunSpec
    from lncr.training.trainer import train_run

    cfg = study.config
    entries = study_entries(study, "HE", "10x")
    cache = FeatureCache(Layout(cfg.output_dir), cfg.embedding)
    settings = cfg.training  # the run's features: what train_run will ask for
    fspec = run_features(settings, cfg.embedding, str(weights),
                         input_geometry(settings, cfg.tiling.tile_size), IMAGENET_STATS, "fp32")
    t0 = time.perf_counter()
    embed_entries(cache, fspec, entries, device)
    embed = time.perf_counter() - t0
    tiles = sum(e.n_tiles for e in entries) * fspec.views
    result = {"slides": len(entries), "epochs": settings.epochs, "tiles_embedded": tiles,
              "embed_s": round(embed, 2), "embed_tiles_per_s": round(tiles / embed, 1)}
    # warm-up: the first run in a process pays one-off imports (TensorBoard, timm)
    warm = settings.model_copy(update={"epochs": 1})
    for features in (cache, None):
        train_run(RunSpec("HE", "10x", settings.architecture, 4, 0), entries, warm,
                  cfg.output_dir / "warm", 128, weights=str(weights), device=device,
                  features=features, force=True)
    for bag in bag_sizes:
        spec = RunSpec("HE", "10x", settings.architecture, bag, 0)
        times = {}
        for name, features in (("cached", cache), ("end_to_end", None)):
            t0 = time.perf_counter()
            train_run(spec, entries, settings, cfg.output_dir / f"runs-{name}", 128,
                      weights=str(weights), device=device, features=features)
            times[name] = time.perf_counter() - t0
        result[f"bag_{bag}"] = {"unit_end_to_end_s": round(times["end_to_end"], 2),
                                "unit_cached_s": round(times["cached"], 2),
                                "speedup": round(times["end_to_end"] / times["cached"], 1)}
    bags = [result[f"bag_{b}"] for b in bag_sizes]
    result["grid_speedup"] = round(sum(b["unit_end_to_end_s"] for b in bags)
                                   / sum(b["unit_cached_s"] for b in bags), 1)
    return result


def encoder_rate(name: str, size: int, device: str, amp: bool, seconds: float = 6.0) -> float:
    """Forward-only tiles/s of ``name``'s features at ``size`` px, batch 64."""
    from lncr.models.backbones import build_backbone

    dev = torch.device(device)
    encoder = build_backbone(name, 128, None).eval().to(dev)
    x = torch.rand(64, 3, size, size, device=dev)
    done, start = 0, None
    with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        while start is None or time.perf_counter() - start < seconds:
            encoder.features(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if start is None:
                start = time.perf_counter()  # after one warm-up batch
            else:
                done += len(x)
    return round(done / (time.perf_counter() - start), 1)


def head_step_ms(features: int, bag: int, device: str, steps: int = 200) -> dict:
    """Milliseconds of one training step (forward, backward, SGD) and one evaluation pass of
    the published bag model on cached features: 512 wide, 8 heads, FF 2048, one bag."""
    import torch.nn.functional as F

    from lncr.models.mil import FeatureModel, build_head_mil

    dev = torch.device(device)
    model = FeatureModel(build_head_mil("resnet50", features, 512, 2, 8, 2048, 0.1)).to(dev)
    optimiser = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9, foreach=True)
    x, y = torch.rand(1, bag, features, device=dev), torch.ones(1, device=dev)

    def timed(train: bool) -> float:
        model.train(train)
        start = time.perf_counter()
        for _ in range(steps):
            with torch.set_grad_enabled(train):
                logits, _ = model(x)
            if train:
                loss = F.binary_cross_entropy_with_logits(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return round((time.perf_counter() - start) / steps * 1000, 2)

    timed(True)  # warm-up
    return {"features": features, "bag": bag, "train_step_ms": timed(True),
            "eval_pass_ms": timed(False)}


def loader_rate(study, workers: int, size: int, seconds: float = 6.0) -> float:
    """Tiles/s the embedding's data loader delivers (decode + crop in workers)."""
    from torch.utils.data import DataLoader

    from lncr.data.entries import study_entries
    from lncr.features.embed import TileViews, batches
    from lncr.features.spec import FeatureSpec

    entries = study_entries(study, "HE", "10x")
    spec = FeatureSpec("resnet50", "", "", 96, size, (0.5,) * 3, (0.5,) * 3)
    keys = batches(entries, 1, 64) * 50
    data = DataLoader(TileViews(entries, spec), batch_size=None, sampler=keys,
                      num_workers=workers)
    done, start = 0, None
    for bag, _ in data:
        if start is None:
            start = time.perf_counter()
            continue
        done += len(bag)
        if time.perf_counter() - start > seconds:
            break
    return round(done / (time.perf_counter() - start), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patients", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="encoder input for throughput")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--bag-sizes", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="default: the demo's grid")
    parser.add_argument("--throughput-only", action="store_true",
                        help="skip the per-unit comparison (a short GPU check)")
    args = parser.parse_args()
    from lncr.models.weights import lite0_weights

    gpu = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = phantom(root / "study", args.patients)
        weights = lite0_weights(root / "lite0.pth")
        result = {"device": args.device, "threads": torch.get_num_threads()}
        if not args.throughput_only:
            result["unit"] = unit_costs(study, weights, args.device, args.bag_sizes)
        encoders = ["resnet18", "resnet50", "timm:vit_base_patch16_224"]
        if gpu:
            encoders.append("timm:vit_large_patch16_224")
        result["throughput"] = {name: encoder_rate(name, args.size, args.device, gpu)
                                for name in encoders}
        torch.set_num_threads(1)  # one sweep unit = one thread (sweep.unit_cpus)
        result["published_head_one_thread"] = head_step_ms(2048, 30, args.device)
        if gpu:
            result["loader_tiles_per_s"] = loader_rate(study, args.loader_workers, args.size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
