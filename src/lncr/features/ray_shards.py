"""``lncr embed --executor ray``: the slides still to embed split into shards, one Ray task
each, on a Ray cluster (or a local Ray instance).

Each task runs the shard function it is given (:func:`lncr.features.study_run.embed_shard`,
passed in by its caller, which sits above this module) on its share (every N-th slide
still to embed), asking for one GPU when the cluster has GPUs, so N tasks use N GPUs across
the nodes. Every slide's file is written by exactly one task and renamed into place when
complete, so the shards need no merge; a task that dies is retried by Ray (twice), and what
it had finished is kept. Every node needs lncr installed and the study's folder on a shared
file system, as for the sweep's Ray executor.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from lncr.errors import WorkFailed
from lncr.study.validate import Study

#: ``work(study, encoders, device, (i, n))``: embed shard i of n, one row per encoder × stain ×
#: magnification.
ShardWork = Callable[[Study, list[str], str, tuple[int, int]], pd.DataFrame]


def _shard_task(work: ShardWork, study: Study, encoders: list[str], shard: tuple[int, int]
                ) -> list[dict]:
    return work(study, encoders, "auto", shard).to_dict("records")


def embed_on_ray(study: Study, encoders: list[str], work: ShardWork, workers: int = 0,
                 address: str | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """Embed in ``workers`` shards as Ray tasks (0: one per GPU of the cluster, else 2), each
    running ``work`` on its share; the rows of every shard, summed per encoder × stain ×
    magnification."""
    try:
        import ray
    except ImportError as exc:
        raise ValueError("--executor ray needs Ray: pip install 'lncr[ray]'") from exc
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        shards = workers or max(gpus, 2)
        task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=2)(_shard_task)
        refs = [task.remote(work, study, encoders, (i, shards)) for i in range(shards)]
        rows: list[dict] = []
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            try:
                rows += ray.get(done[0])
            except ray.exceptions.RayError as exc:
                raise WorkFailed(f"an embedding shard failed on Ray: {exc}; run the same "
                                 "command again to finish (finished slides are kept)") from exc
            if progress is not None:
                progress("shards", shards - len(refs), shards)
    finally:
        if started:
            ray.shutdown()
    keys = ["encoder", "stain", "magnification", "feature_id", "slides"]
    table = pd.DataFrame(rows)
    return (table.groupby(keys, as_index=False, sort=False)
            .agg(embedded=("embedded", "sum"), tiles=("tiles", "sum"),
                 seconds=("seconds", "max")))
