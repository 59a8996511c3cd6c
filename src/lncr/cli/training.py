"""``lncr train`` and ``lncr predict``: thin commands over :mod:`lncr.training`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lncr.cli.common import Meter, console, epoch_line, err_console, fmt, table, warn_unusable


def _weights(weights: Optional[Path], pretrained: bool, configured: bool):
    if weights is not None:
        if not weights.exists():
            raise ValueError(f"--weights {weights}: no such file")
        return weights
    return "imagenet" if pretrained and configured else None


def train(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    stain: Annotated[str, typer.Option(help="Stain to train on.")],
    magnification: Annotated[str, typer.Option(help="Magnification, e.g. 20x.")],
    architecture: Annotated[Optional[str], typer.Option(help="Backbone (default: training.architecture).")] = None,
    bag_size: Annotated[Optional[int], typer.Option(min=1, help="Tiles per bag (default: training.bag_size).")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Seed (default: training.seed).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file (a state dict of the backbone).")] = None,
    pretrained: Annotated[bool, typer.Option(help="ImageNet weights (--no-pretrained: random initialisation).")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. training.epochs=20.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
    force: Annotated[bool, typer.Option(help="Restart even a finished or started run.")] = False,
) -> None:
    """Train one attention-MIL model for a stain and magnification (resumes if interrupted).

    On several GPUs: torchrun --nproc-per-node K -m lncr train STUDY --stain HE ...
    """
    import pandas as pd

    from lncr.data.distributed import setup, teardown
    from lncr.data.entries import study_entries, unusable_patients, validation_problem
    from lncr.features.embed import FeatureCache
    from lncr.layout import Layout
    from lncr.study.validate import Study
    from lncr.training.loop import RunSpec
    from lncr.training.trainer import train_run

    ctx = None
    try:
        ctx = setup(device)
        study = Study.load(study_yaml, set_)
        cfg = study.config
        entries = study_entries(study, stain, magnification)
        excluded = unusable_patients(study, stain, magnification)
        if ctx.main:
            warn_unusable(excluded, f"{stain} {magnification}")
            unvalidated = validation_problem(entries)
            if unvalidated:
                err_console.print(f"[yellow]WARNING {escape(stain)} {escape(magnification)}: "
                                  f"{escape(unvalidated)}: the run trains but has no "
                                  "validation AUC[/yellow]")
        t = cfg.training
        spec = RunSpec(stain, magnification, architecture or t.architecture,
                       t.bag_size if bag_size is None else bag_size, t.seed if seed is None else seed)
        w = _weights(weights, pretrained, t.pretrained)
        # A bar within each epoch on a terminal; off it, a line at most every minute of a
        # long epoch (each epoch's own line says the rest).
        with Meter("steps", every=60, last_line=False) as meter:
            def step_done(epoch: int, step: int, steps: int) -> None:
                meter.update(f"epoch {epoch + 1}/{t.epochs}", step, steps)

            folder = train_run(spec, entries, t, cfg.output_dir / "runs",
                               cfg.tiling.tile_size, weights=w, device=ctx, force=force,
                               source=study.source, excluded=excluded,
                               features=FeatureCache(Layout(cfg.output_dir), cfg.embedding),
                               on_epoch=epoch_line, on_step=step_done if ctx.main else None)
    finally:
        if ctx is not None:
            teardown(ctx)
    if ctx.main:
        metrics = pd.read_csv(folder / "metrics.csv")
        last = metrics.iloc[-1]
        console.print(f"Run {folder}: {len(metrics)} epochs; last epoch train AUC "
                      f"{fmt(last.train_auc)}, validation AUC {fmt(last.val_auc)}, best "
                      f"validation AUC {fmt(metrics.val_auc.max())}")


def predict(
    target: Annotated[Path, typer.Argument(help="A study YAML (every final model, with the ensembles) or one run folder (<output_dir>/runs/<stain>/<mag>/<run>).")],
    cohort: Annotated[Optional[str], typer.Option(help="Run folder only: development, train (the patients the run trained on), val (the patients the run held out), external, prospective, outside (external and prospective) or all (default all).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Run folder only: best or last (default last, as a study's evaluation.checkpoint).")] = None,
    tiles: Annotated[Optional[str], typer.Option(help="Run folder only: eval (up to eval_tiles per slide, the default) or all (every tile, in chunks).")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(min=1, help="Run folder only: tiles per chunk with --tiles all (default: eval_tiles).")] = None,
    study: Annotated[Optional[Path], typer.Option(help="Run folder only: study file (default: the one the run recorded).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting of the study.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    shard: Annotated[Optional[str], typer.Option(help="Study only: predict with every n-th final model from the i-th (i/n, 0 ≤ i < n), for n machines; the last to finish builds the ensembles.")] = None,
) -> None:
    """Predict P(complete response): with a study file, every final model of the sweep and the
    single-stain and multi-stain ensembles (predictions/*.csv); with a run folder, that run."""
    from lncr.training.metrics import auc
    from lncr.training.predict import predict_run, prediction_path

    if target.suffix in (".yaml", ".yml"):  # a study (load_config names a missing one)
        given = [name for name, value in (("--cohort", cohort), ("--checkpoint", checkpoint),
                                          ("--tiles", tiles), ("--chunk-size", chunk_size),
                                          ("--study", study)) if value is not None]
        if given:
            raise typer.BadParameter(
                f"{', '.join(given)} apply to a run folder only: a study predicts every patient "
                "with evaluation.checkpoint and evaluation.tiles (e.g. --set "
                "evaluation.checkpoint=best --set evaluation.tiles=all)")
        if shard is not None:
            _predict_shard(target, set_, device, workers, shard)
        else:
            _predict_study(target, set_, device, workers)
        return
    if shard is not None:
        raise typer.BadParameter("--shard splits a study's final models: give the study file")
    cohort, checkpoint, tiles = cohort or "all", checkpoint or "last", tiles or "eval"
    rows = predict_run(target, cohort, checkpoint, tiles, chunk_size, study, set_, device,
                       workers)
    summary = []
    for split, part in rows.groupby("split", sort=False):
        both = part.label.nunique() == 2
        summary.append((split, len(part), int(part.tiles_used.sum()),
                        f"{auc(part.label, part.probability):.3f}" if both else "-"))
    console.print(table("Predictions", ["split", "slides", "tiles", "AUC"], summary))
    console.print(f"Written: {prediction_path(target, cohort, checkpoint, tiles)}")


def _predict_shard(study_yaml: Path, overrides: list[str] | None, device: str,
                   workers: int, shard: str) -> None:
    from lncr.evaluation.final_predictions import predict_shard
    from lncr.sharding import Shard
    from lncr.study.validate import Study

    part = Shard.parse(shard)
    with Meter("final models of this shard", every=0) as meter:
        note = predict_shard(Study.load(study_yaml, overrides), part, device, workers,
                             meter.update)
    console.print(f"Shard {part}: its models' predictions are in their run folders; " + (
        "every model has predicted: ensembles written to predictions/." if not note else
        f"ensembles not built yet ({escape(note)}); the last shard builds them."))


def _predict_study(study_yaml: Path, overrides: list[str] | None, device: str,
                   workers: int) -> None:
    from lncr.evaluation.final_predictions import predict_final
    from lncr.study.validate import Study
    from lncr.training.metrics import auc

    with Meter("final models", every=0) as meter:
        result = predict_final(Study.load(study_yaml, overrides), device, workers, meter.update)
    for model, excluded in result.unusable.items():
        warn_unusable(excluded, model)
    for m in result.missing:
        err_console.print(f"[yellow]WARNING no final model for {escape(m['stain'])} "
                          f"{escape(m['magnification'])} ({escape(m['error'] or 'not done')}): "
                          "the ensembles use the others[/yellow]")
    rows = []
    for name, t in (("multi-stain", result.multi.assign(stain="multi-stain")),
                    ("", result.stains)):
        for (stain, split), part in t.dropna(subset=["probability"]).groupby(["stain", "split"]):
            both = part.label.nunique() == 2
            rows.append((stain, split, len(part),
                         f"{auc(part.label, part.probability):.3f}" if both else "-"))
    console.print(table("Ensemble predictions (AUC per split)", ["ensemble", "split",
                                                                 "patients", "AUC"], rows))
    console.print(f"Written: {result.folder} (single_models.csv, stain_ensembles.csv, "
                  "multi_stain.csv)")
