"""Tiling split over machines: ``lncr tile --shard i/n``.

Shard *i* of *n* (0 ≤ *i* < *n*, as ``lncr embed --shard``) tiles every *n*-th slide of the
plan, starting with the *i*-th (counting from 0; all
magnifications of a slide stay in one shard, so a slide is opened by one machine only). The
shards share the output folder (a shared file system) and each holds a lock of its own
(``tiles/shards/<i>-of-<n>/``), so they run side by side; a shard run twice at once is refused.
Each writes its rows of the index as ``tiles/shards/<i>-of-<n>.csv`` (beside a ``.json`` with
its time, workers and reference errors) when it has finished.

The merge checks the parts — the same *n*, every shard present, every slide × magnification
of the plan exactly once — and writes ``index.csv``, ``summary.csv`` and ``run.json`` under
the output folder's lock. The last shard to finish merges; ``lncr tile --merge`` does it by
hand (after a shard found the folder busy, for example). A run without ``--shard`` tiles
everything, reusing the shards' stores, and removes the parts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from lncr.errors import BadInput
from lncr.fileio import atomic_write_json
from lncr.layout import INDEX_PATHS, Layout, read_table, write_table
from lncr.paths import resolve_columns, store_columns
from lncr.sharding import MERGE_WAIT, Shard

_PART = re.compile(r"^(\d+)-of-(\d+)\.csv$")


class ShardsIncomplete(BadInput):
    """The shards' parts cannot be merged yet (or no longer fit the study)."""


def _folder(layout: Layout) -> Path:
    return layout.tiles_dir / "shards"


def write_part(layout: Layout, shard: Shard, index: pd.DataFrame, seconds: float,
               workers: int | None, reference_errors: dict[str, str]) -> None:
    """A finished shard's rows of the index (the CSV last: it marks the part complete)."""
    folder = _folder(layout)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{shard.name}.json", {
        "seconds": round(seconds, 2), "workers": workers, "reference_errors": reference_errors})
    write_table(folder / f"{shard.name}.csv", store_columns(index, INDEX_PATHS, layout.root))


def read_parts(layout: Layout) -> dict[Shard, tuple[pd.DataFrame, dict]]:
    """Every finished part: its index rows (paths resolved) and its record."""
    parts = {}
    folder = _folder(layout)
    for path in sorted(folder.glob("*-of-*.csv")) if folder.is_dir() else []:
        match = _PART.match(path.name)
        if not match:
            continue
        record_path = path.with_suffix(".json")
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        rows = resolve_columns(read_table(path), INDEX_PATHS, layout.root)
        parts[Shard(int(match[1]), int(match[2]))] = (rows, record)
    return parts


def clear_parts(layout: Layout) -> None:
    """Remove the parts (a whole-study run has written the index itself)."""
    folder = _folder(layout)
    for path in folder.glob("*-of-*.*") if folder.is_dir() else []:
        if path.is_file():
            path.unlink()


def _check(parts: dict, units: list) -> None:
    """Raise :class:`ShardsIncomplete` unless the parts cover the plan exactly once."""
    counts = {s.count for s in parts}
    if len(counts) > 1:
        raise ShardsIncomplete(f"parts of different splits ({', '.join(map(str, parts))}) are "
                               "in tiles/shards/: run every shard of one split again")
    n = counts.pop() if counts else 0
    missing = [f"{i}/{n}" for i in range(n) if Shard(i, n) not in parts] if n else []
    if not parts:
        raise ShardsIncomplete("no shard has finished (tiles/shards/ holds no part): run "
                               "`lncr tile STUDY --shard i/n` on each machine first")
    if missing:
        raise ShardsIncomplete(f"shard(s) {', '.join(missing)} have not finished: run `lncr "
                               "tile STUDY --shard i/n` for them")
    keys = pd.concat([rows for rows, _ in parts.values()])[
        ["patient_id", "stain", "magnification"]].apply(tuple, axis=1)
    planned = {(u.patient_id, u.stain, u.magnification) for u in units}
    extra, absent = set(keys) - planned, planned - set(keys)
    if keys.duplicated().any() or extra or absent:
        raise ShardsIncomplete(f"the shards' parts do not match the study ({len(absent)} "
                               f"slide × magnification unit(s) missing, {len(extra)} not in "
                               "it): the tables changed since; run the shards again")


def merge_shards(study, units: list | None = None, wait: float = 0.0) -> pd.DataFrame:
    """Merge the shards' parts into the study's index (``lncr tile --merge``), waiting up to
    ``wait`` seconds for the output folder."""
    from lncr.locks import output_lock
    from lncr.tiling.index import INDEX_COLUMNS, plan_units, write_index

    layout = Layout(study.config.output_dir)
    with output_lock(study.config.output_dir, "lncr tile --merge", wait):
        parts = read_parts(layout)
        units = units if units is not None else plan_units(study, layout)
        _check(parts, units)
        order = {(u.patient_id, u.stain, u.magnification): i for i, u in enumerate(units)}
        index = pd.concat([rows for rows, _ in parts.values()], ignore_index=True)
        index = index.iloc[index.apply(lambda r: order[(r.patient_id, r.stain,
                                                        r.magnification)], axis=1).argsort()]
        index = index[INDEX_COLUMNS].reset_index(drop=True)
        records = [record for _, record in parts.values()]
        errors = {k: v for r in records for k, v in (r.get("reference_errors") or {}).items()}
        write_index(study, layout, index, sum(r.get("seconds", 0) for r in records),
                    sum(r.get("workers") or 0 for r in records), errors, len(parts))
    return index


def try_merge(study, units: list) -> str:
    """Merge when every part is there: "" when merged, else why not (a shard has not
    finished, or another command holds the folder longer than :data:`MERGE_WAIT`)."""
    from lncr.locks import OutputBusy

    try:
        merge_shards(study, units, MERGE_WAIT)
    except (ShardsIncomplete, OutputBusy) as exc:
        return str(exc)
    return ""
