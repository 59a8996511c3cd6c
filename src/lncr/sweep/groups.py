"""Which sweep units train together (``sweep.group_size``).

Units on cached features (``sweep.backbone: frozen``) of one architecture and bag size, with
the same schedule and stopping point — whatever their stain, magnification, seed and split —
become one :class:`~lncr.sweep.unit.GroupTask`, trained as one stacked model
(:mod:`lncr.training.group`) with each unit's lone results. Bag sizes are never mixed in a
group: padding a bag of 8 tiles to 64 would multiply its attention work by 64 and its other
work by 8, for nothing. The worker splits a group further when its memory estimate does not
fit the device (:mod:`lncr.training.group_memory`).

``group_size`` 0 (automatic) makes groups as large as keeps every worker busy: units of a key
are cut into groups of at most ⌈units / workers⌉; 1 trains one unit at a time, as before
groups existed; n caps a group at n units.
"""

from __future__ import annotations

import math

from lncr.sweep.unit import GroupTask, Task, UnitTask


def _key(task: UnitTask) -> tuple:
    """What units of one group share: the encoder (so the features' width and the head's
    shape), the bag size, the schedule and the stopping point. Stain and magnification may
    differ — each unit reads its own features."""
    u = task.unit
    return (u.architecture, u.bag_size, task.epochs, task.stop_epoch, task.weights,
            task.device, task.threads)


def _even_chunks(items: list, cap: int) -> list[list]:
    """``items`` in ⌈len / cap⌉ chunks whose sizes differ by at most one."""
    count = math.ceil(len(items) / cap)
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def group_tasks(tasks: list[UnitTask], group_size: int, workers: int) -> list[Task]:
    """``tasks`` with the units that can train together merged into group tasks (in the
    order of their first unit); units that cannot (fine-tuned backbones) stay alone."""
    frozen = [t for t in tasks if t.frozen]
    if group_size == 1 or len(frozen) < 2:
        return list(tasks)
    cap = group_size or max(1, math.ceil(len(frozen) / max(1, workers)))
    keyed: dict[tuple, list[UnitTask]] = {}
    for t in frozen:
        keyed.setdefault(_key(t), []).append(t)
    first_of = {}
    for members in keyed.values():
        for chunk in _even_chunks(members, cap):
            first_of[id(chunk[0])] = chunk
    out: list[Task] = []
    for t in tasks:
        if not t.frozen:
            out.append(t)
        elif id(t) in first_of:
            chunk = first_of[id(t)]
            out.append(chunk[0] if len(chunk) == 1 else GroupTask(
                tuple(c.unit for c in chunk), t.study, t.runs_root, t.epochs, t.stop_epoch,
                t.device, t.threads, t.weights, t.frozen))
    return out
