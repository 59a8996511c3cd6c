"""Benchmark the stain normalisers.

1. Throughput on 512×512 real H&E tiles (``CMU-1-Small-Region.svs``): lncr's Macenko,
   Vahadane and Reinhard with a per-tile source estimate and with the source estimated once
   per slide; in the same run, StainTools and torchstain when installed (their default
   threading). Prints tiles/s and lncr's ratio to each peer.
2. The phantom's cohort gap per stain and method: the distance between the development and
   external cohorts' mean stain colours (unit OD direction of tissue pixels), before and after
   normalisation, divided by the spread of development slides. The defaults for three-dye
   stains (PASM, MASSON) are chosen from this table (see docs/tiling.md).

    python bench/stain.py [--real-data tests/data/slides] [--skip-gap]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide

from lncr.tiling.normalisers import make_normaliser

REPO = Path(__file__).resolve().parents[1]


def real_tiles(path: Path, n: int = 16) -> list[np.ndarray]:
    with openslide.OpenSlide(str(path)) as s:
        w, h = s.dimensions
        tiles = []
        for y in range(0, h - 511, 512):
            for x in range(0, w - 511, 512):
                t = np.asarray(s.read_region((x, y), 0, (512, 512)))[..., :3].copy()
                if (t.mean(axis=2) < 200).mean() > 0.3:
                    tiles.append(t)
    return (tiles * (n // max(len(tiles), 1) + 1))[:n]


def rate(fn, tiles: list[np.ndarray], min_seconds: float = 1.0) -> float:
    fn(tiles[0])
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or done < len(tiles):
        fn(tiles[done % len(tiles)])
        done += 1
    return done / (time.perf_counter() - t0)


def throughput(tiles: list[np.ndarray]) -> None:
    ref, rest = tiles[0], tiles[1:]
    results: dict[str, float] = {}
    for method in ("macenko", "vahadane", "reinhard"):
        norm = make_normaliser(method).fit(ref)
        results[f"lncr {method} per tile"] = rate(norm.transform, rest)
        norm.fit_source(np.concatenate(rest[:8], axis=0))
        results[f"lncr {method} per slide"] = rate(norm.transform, rest)
    try:
        import staintools

        for method in ("macenko", "vahadane"):
            st = staintools.StainNormalizer(method=method)
            st.fit(ref)
            results[f"StainTools {method}"] = rate(st.transform, rest,
                                                   0.5 if method == "macenko" else 0.1)
        st = staintools.ReinhardColorNormalizer()
        st.fit(ref)
        results["StainTools reinhard"] = rate(st.transform, rest)
    except ImportError:
        print("StainTools not installed: skipped")
    try:
        import torchstain
        from torchvision import transforms

        n_np = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        n_np.fit(ref)
        results["torchstain macenko numpy"] = rate(lambda t: n_np.normalize(I=t, stains=False), rest)
        to_t = transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: x * 255)])
        n_t = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        n_t.fit(to_t(ref))
        torch_tiles = [to_t(t) for t in rest]
        results["torchstain macenko torch"] = rate(lambda t: n_t.normalize(I=t, stains=False),
                                                   torch_tiles)
    except ImportError:
        print("torchstain not installed: skipped")
    print(f"\n{'normaliser':34} {'tiles/s':>8}")
    for name, r in results.items():
        print(f"{name:34} {r:8.1f}")
    print("\nratios (lncr / peer, same run):")
    pairs = [("lncr macenko per tile", "torchstain macenko torch"),
             ("lncr macenko per tile", "torchstain macenko numpy"),
             ("lncr macenko per tile", "StainTools macenko"),
             ("lncr vahadane per tile", "StainTools vahadane"),
             ("lncr reinhard per tile", "StainTools reinhard")]
    for a, b in pairs:
        if a in results and b in results:
            print(f"  {a} / {b}: {results[a] / results[b]:.1f}x")


def stain_colour(tile: np.ndarray) -> np.ndarray | None:
    rgb = tile.reshape(-1, 3).astype(np.float32)
    od = -np.log((rgb + 1) / 256)
    od = od[(od > 0.15).all(axis=1)]
    if len(od) < 100:
        return None
    return (od / np.linalg.norm(od, axis=1, keepdims=True)).mean(axis=0)


def cohort_gap() -> None:
    from lncr.synth.cohort import SynthSettings, synthesize
    from lncr.tiling.store import TileStore
    from lncr.tiling.unit import TileParams, TileUnit, tile_unit

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "ph", SynthSettings(patients=6, external=6, seed=5, size="small"), workers=2)
        params = TileParams(tile_size=256, encoding="jpeg")
        tiles: dict[tuple[str, str], list[np.ndarray]] = {}
        import pandas as pd

        patients = pd.read_csv(tmp / "ph" / "patients.csv")
        for row in patients.itertuples():
            for stain in ("HE", "PAS", "PASM", "MASSON"):
                store = tmp / "st" / f"{row.patient_id}_{stain}.tiles.zip"
                unit = TileUnit(row.patient_id, row.cohort, stain,
                                str(tmp / "ph" / "slides" / f"{row.patient_id}_{stain}.tiff"),
                                None, "20x", 0.5, str(store))
                tile_unit(unit, params, None)
                with TileStore(store) as s:
                    tiles[(row.patient_id, stain)] = [s[i] for i in range(len(s))]
        cohort = dict(zip(patients.patient_id, patients.cohort))
        print(f"\n{'stain':7} {'method':9} {'gap/spread before':>18} {'after':>8}  (lower is better)")
        for stain in ("HE", "PAS", "PASM", "MASSON"):
            dev_tiles = [t for (p, s), ts in tiles.items() if s == stain and cohort[p] == "development"
                         for t in ts[:4]]
            reference = np.concatenate(dev_tiles[:16], axis=0)
            for method in ("none", "macenko", "vahadane", "reinhard"):
                norm = make_normaliser(method).fit(reference)
                per = {"development": [], "external": []}
                for (p, s), ts in tiles.items():
                    if s != stain or not ts:
                        continue
                    norm.fit_source(np.concatenate(ts[:8], axis=0))
                    cols = [c for c in (stain_colour(norm.transform(t)) for t in ts) if c is not None]
                    per[cohort[p]].append(np.mean(cols, axis=0))
                dev, ext = np.array(per["development"]), np.array(per["external"])
                spread = np.sqrt((np.linalg.norm(dev - dev.mean(0), axis=1) ** 2).mean())
                gap = np.linalg.norm(ext.mean(0) - dev.mean(0))
                if method == "none":
                    before = gap / spread
                    print(f"{stain:7} {'none':9} {before:18.2f}")
                else:
                    print(f"{stain:7} {method:9} {'':18} {gap / spread:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-data", type=Path, default=REPO / "tests" / "data" / "slides")
    ap.add_argument("--skip-gap", action="store_true")
    args = ap.parse_args()
    throughput(real_tiles(args.real_data / "CMU-1-Small-Region.svs"))
    if not args.skip_gap:
        cohort_gap()


if __name__ == "__main__":
    main()
