"""Where sweep units run: a local process pool, or a Ray cluster.

Both take a list of :class:`~lncr.sweep.unit.UnitTask` and yield each unit's result row as it
finishes. A unit's result depends only on its task (seeded; the same number of CPU threads in
both executors), so the same sweep gives the same results under either.

- :class:`LocalExecutor`: ``workers`` processes (spawned, so CUDA is safe). On a machine with
  GPUs each running unit gets a GPU of its own (``workers`` = number of GPUs by default); on a
  CPU, ``workers`` units run side by side with ``unit_cpus`` threads each. A worker that dies
  (out of memory, a crash in native code) fails its unit and the pool is rebuilt for the rest.
- :class:`RayExecutor`: each unit is a Ray task asking for ``unit_cpus`` CPUs and, when the
  cluster has GPUs, ``unit_gpus`` GPUs (Ray then sets ``CUDA_VISIBLE_DEVICES`` for it).
  ``address`` connects to a running cluster (``ray start --head`` on one node, ``ray start
  --address=…`` on the others; every node needs lncr installed and the study's folder on a
  shared file system); without it a local Ray instance is started and stopped again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from lncr.sweep.unit import Task, result_row, run_task, task_units
from lncr.workers import process_pool


@runtime_checkable
class Executor(Protocol):
    """Where sweep units run. ``map`` yields one result row per unit of its tasks (a
    :class:`~lncr.sweep.unit.UnitTask` or a :class:`~lncr.sweep.unit.GroupTask` of units
    trained together; a row of :func:`lncr.sweep.unit.result_row`, with ``status="failed"``
    for a unit that could not run) in completion order; ``close`` releases what the executor
    started."""

    name: str

    def map(self, tasks: list[Task]) -> Iterator[dict]: ...

    def close(self) -> None: ...


def _failed(task: Task, error: str) -> list[dict]:
    """A failed row for each unit of ``task``."""
    return [result_row(u, u.spec.folder(Path(task.runs_root)), "failed", error)
            for u in task_units(task)]


def cuda_devices() -> list[str]:
    """``['cuda:0', …]`` for the GPUs this process can see (without initialising CUDA in
    this process, which would make forked workers unsafe)."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


class LocalExecutor:
    """A pool of worker processes on this machine, started on the first :meth:`map` and kept
    for the next ones (the rungs of successive halving, then the final models) until
    :meth:`close`: each worker process imports torch once per sweep, not once per rung."""

    name = "local"

    def __init__(self, workers: int = 0, unit_cpus: int = 1, device: str = "auto"):
        gpus = cuda_devices() if device in ("auto", "cuda") else (
            [device] if device.startswith("cuda") else [])
        self.devices = gpus
        if workers <= 0:
            workers = len(gpus) or max(1, (os.cpu_count() or 1) // unit_cpus)
        self.workers = workers
        self.unit_cpus = unit_cpus
        self._pool = None

    def _device(self, slot: int) -> str:
        return self.devices[slot % len(self.devices)] if self.devices else "cpu"

    def close(self) -> None:
        """Stop the worker processes (cancelling what has not started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, tasks: list[Task]) -> Iterator[dict]:
        """Run ``tasks``; yield each unit's result row in completion order."""
        pending = list(tasks)
        if not pending:
            return
        if self._pool is None:  # processes start on demand, up to the pool's size
            self._pool = process_pool(self.workers)
        running: dict[Future, tuple[Task, int]] = {}
        free = list(range(self.workers))
        finished = False
        try:
            while pending or running:
                while pending and free:
                    slot = free.pop(0)
                    task = replace(pending.pop(0), device=self._device(slot),
                                   threads=self.unit_cpus)
                    running[self._pool.submit(run_task, task)] = (task, slot)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    task, slot = running.pop(fut)
                    free.append(slot)
                    try:
                        rows = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        rows = _failed(task, "the worker process died while training this "
                                             "unit (out of memory? a crash in native code?)")
                    yield from rows
                if broken:  # the pool is unusable: fail what it held, start a new one
                    for fut, (task, slot) in list(running.items()):
                        free.append(slot)
                        yield from _failed(task, "the worker pool broke while this unit ran")
                    running.clear()
                    self.close()
                    self._pool = process_pool(self.workers)
            finished = True
        finally:
            if not finished:  # stopped early (an error, an interrupt): stop the workers too
                self.close()


class RayExecutor:
    """Units as Ray tasks on a local or remote Ray cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 0, unit_cpus: int = 1,
                 unit_gpus: float = 1.0, device: str = "auto", retries: int = 2):
        try:
            import ray
        except ImportError as exc:
            raise ValueError("the Ray executor needs Ray: pip install 'lncr[ray]' "
                             "(or pip install ray)") from exc
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False}
            if address is None and workers > 0:
                options["num_cpus"] = workers * unit_cpus
            ray.init(address=address, **options)
            self.started = True
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.unit_cpus = unit_cpus
        self.device = ray_task_device(device)
        # A unit whose worker process dies (pre-emption, out of memory) is run again up to
        # ``retries`` times; it resumes from its run folder's last checkpoint.
        gpus = unit_gpus if has_gpus and self.device != "cpu" else 0  # --device cpu: none
        self.remote = ray.remote(num_cpus=unit_cpus, num_gpus=gpus,
                                 max_retries=retries)(run_task)

    def map(self, tasks: list[Task]) -> Iterator[dict]:
        ray = self.ray
        refs = {self.remote.remote(replace(t, device=self.device, threads=self.unit_cpus)): t
                for t in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    rows = _failed(task, f"Ray could not run this unit: {exc}")
                yield from rows

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def ray_task_device(device: str) -> str:
    """The device a Ray task asks for: ``cpu`` stays CPU; anything else (``auto``, ``cuda``,
    ``cuda:N``) becomes ``auto``: the GPU Ray assigned to the task, a driver-side index means
    nothing on another node."""
    return "cpu" if device == "cpu" else "auto"


def local_executor(workers: int, unit_cpus: int, unit_gpus: float, address: str | None,
                   device: str, retries: int = 0) -> LocalExecutor:
    if address:
        raise ValueError("--address is for the Ray executor; add --executor ray")
    return LocalExecutor(workers, unit_cpus, device)


def ray_executor(workers: int, unit_cpus: int, unit_gpus: float, address: str | None,
                 device: str, retries: int = 2) -> RayExecutor:
    return RayExecutor(address, workers, unit_cpus, unit_gpus, device, retries)


def make_executor(kind: str, workers: int = 0, unit_cpus: int = 1, unit_gpus: float = 1.0,
                  address: str | None = None, device: str = "auto", retries: int = 2
                  ) -> Executor:
    """The executor a sweep asked for (registered in :mod:`lncr.registries`)."""
    from lncr.registries import EXECUTORS
    from lncr.study.config import registered

    factory = globals()[EXECUTORS[registered(kind, list(EXECUTORS), "executor")]]
    return factory(workers, unit_cpus, unit_gpus, address, device, retries)
