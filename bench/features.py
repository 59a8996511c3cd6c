"""What cached features buy: one sweep unit on cached features vs the same unit end to end
with the backbone frozen, side by side in one run, and embedding throughput per encoder.

Reports, in one run on the current machine:
  embed       seconds and tiles/s to embed every tile of the study's slides once (the
              demo's encoder, EfficientNet-Lite0 with its packaged ImageNet weights)
  unit        seconds of one sweep unit (same settings, seed, slides) end to end with the
              backbone frozen and on cached features, and their ratio (target ≥ 20×)
  throughput  encoder tiles/s (forward only, batch 64) for ResNet-18, ResNet-50 and a
              ViT-B/16 (random weights: the speed does not depend on them), and with
              --device cuda a ViT-L/16 with AMP and the data loader's tiles/s beside it
              (the loader must deliver ≥ 2× what the encoder consumes)

    python bench/features.py                      # CPU, the demo's settings, ~5 minutes
    python bench/features.py --device cuda --size 224 --loader-workers 8   # a GPU machine
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

DEMO = ["tiling.encoding=jpeg", "tiling.tile_size=128", "magnification.powers=[10]",
        "split.val_fraction=0.25", "training.pretrained=false", "training.backbone_lr_factor=0",
        "training.augment=true", "training.channel_stats=imagenet", "training.epochs=8",
        "training.warmup_epochs=1", "training.optimiser=adam", "training.learning_rate=0.001",
        "training.input_size=384", "training.embedding_dim=32", "training.transformer_heads=4",
        "training.feedforward_dim=64", "training.eval_tiles=32", "training.loader_workers=0",
        "training.architecture=timm:tf_efficientnet_lite0", "embedding.workers=0",
        "embedding.batch_size=128"]


def phantom(root: Path, patients: int):
    """A demo-like phantom (HE only), tiled and validated: the study."""
    from lncr.study.validate import Study, load_study, save_study_record
    from lncr.synth.cohort import SynthSettings, synthesize
    from lncr.tiling.run import tile_study

    synthesize(root, SynthSettings(patients=patients, external=0, seed=1, size="small",
                                   stains=("HE",), signal=1.9), workers=2)
    save_study_record(load_study(root / "study.yaml", DEMO))
    tile_study(Study.load(root / "study.yaml", DEMO), workers=2)
    return Study.load(root / "study.yaml", DEMO)


def unit_costs(study, weights: Path, device: str) -> dict:
    """Embed once, then one unit on cached features and one end to end (seconds)."""
    from lncr.features.embed import FeatureCache, embed_entries
    from lncr.features.spec import run_features
    from lncr.layout import Layout
    from lncr.training.entries import study_entries
    from lncr.training.inputs import IMAGENET_STATS, input_geometry
    from lncr.training.loop import RunSpec, train_run

    cfg = study.config
    entries = study_entries(study, "HE", "10x")
    cache = FeatureCache(Layout(cfg.output_dir), cfg.embedding)
    spec = RunSpec("HE", "10x", cfg.training.architecture, 8, 0)
    settings = cfg.training  # the run's features: what train_run will ask for
    fspec = run_features(settings, cfg.embedding, str(weights),
                         input_geometry(settings, cfg.tiling.tile_size), IMAGENET_STATS, "fp32")
    t0 = time.perf_counter()
    embed_entries(cache, fspec, entries, device)
    embed = time.perf_counter() - t0
    tiles = sum(e.n_tiles for e in entries) * fspec.views
    times = {}
    for name, features in (("cached", cache), ("end_to_end", None)):
        t0 = time.perf_counter()
        train_run(spec, entries, cfg.training, cfg.output_dir / f"runs-{name}", 128,
                  weights=str(weights), device=device, features=features)
        times[name] = time.perf_counter() - t0
    return {"slides": len(entries), "tiles_embedded": tiles, "embed_s": round(embed, 2),
            "embed_tiles_per_s": round(tiles / embed, 1),
            "unit_end_to_end_s": round(times["end_to_end"], 2),
            "unit_cached_s": round(times["cached"], 2),
            "speedup": round(times["end_to_end"] / times["cached"], 1)}


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


def loader_rate(study, workers: int, size: int, seconds: float = 6.0) -> float:
    """Tiles/s the embedding's data loader delivers (decode + crop in workers)."""
    from torch.utils.data import DataLoader

    from lncr.features.embed import TileViews, batches
    from lncr.features.spec import FeatureSpec
    from lncr.training.entries import study_entries

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
    args = parser.parse_args()
    from lncr.models.weights import lite0_weights

    gpu = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = phantom(root / "study", args.patients)
        weights = lite0_weights(root / "lite0.pth")
        result = {"device": args.device, "threads": torch.get_num_threads(),
                  "unit": unit_costs(study, weights, args.device)}
        encoders = ["resnet18", "resnet50", "timm:vit_base_patch16_224"]
        if gpu:
            encoders.append("timm:vit_large_patch16_224")
        result["throughput"] = {name: encoder_rate(name, args.size, args.device, gpu)
                                for name in encoders}
        if gpu:
            result["loader_tiles_per_s"] = loader_rate(study, args.loader_workers, args.size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
