"""``lncr embed``: a thin command over :func:`lncr.features.study_run.embed_study`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli.common import Meter, console, table


def _shard(text: str | None) -> tuple[int, int]:
    from lncr.sharding import Shard

    shard = Shard.parse(text) if text is not None else Shard()
    return shard.index, shard.count


def embed(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    encoder: Annotated[Optional[list[str]], typer.Option(help="Encoder (architecture) to embed with; repeat for several. Default: the study's frozen backbones.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="i/N: embed every N-th slide from the i-th (one share per machine).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. embedding.views=4.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
    executor: Annotated[str, typer.Option(help="local, or ray: the slides in --workers shards as Ray tasks (one GPU each when the cluster has GPUs).")] = "local",
    workers: Annotated[int, typer.Option(min=0, help="Ray shards (0: one per GPU of the cluster, else 2).")] = 0,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (e.g. auto); default: a local Ray instance.")] = None,
) -> None:
    """Compute the tile features of frozen encoders once (resumes; skips what is done)."""
    from lncr.features.study_run import embed_study
    from lncr.study.validate import Study

    parts = _shard(shard)
    if executor == "ray" and shard is not None:
        raise typer.BadParameter("--shard is for local runs; --executor ray makes its own "
                                 "shards (--workers)")
    study = Study.load(study_yaml, set_)
    with Meter("shards" if executor == "ray" else "tiles") as meter:
        done = embed_study(study, encoder, device, parts, meter.update, executor, workers,
                           address)
    rows = [(r.encoder, r.stain, r.magnification, r.feature_id, str(r.slides),
             str(r.embedded), str(r.tiles), f"{r.seconds:.1f}") for r in done.itertuples()]
    console.print(table("Features", ["encoder", "stain", "mag", "id", "slides", "embedded now",
                                     "tiles", "seconds"], rows))
    console.print(f"Features in {study.config.output_dir / 'features'}")
