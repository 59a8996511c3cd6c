"""Several processes (``torchrun``) through torch.distributed: who is who, and gathering.

``torchrun --nproc-per-node K -m lncr train …`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU) and
picks the device. Without those variables everything runs in one process and the helpers are
no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lncr.errors import BadInput


@dataclass(frozen=True)
class Context:
    """One process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so evaluation
        on any rank uses exactly the model rank 0 saves."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BadInput(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N"
                       ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {device}: no CUDA device is available here; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInput(f"--device {device}: this machine has {torch.cuda.device_count()} "
                       "CUDA device(s), numbered from 0")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BadInput(f"--device {device}: lncr runs on cpu or cuda (or mps)")
    return dev


def setup(device: str = "auto") -> Context:
    """Join the process group when launched by torchrun; one-process context otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Context(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world, local, dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
