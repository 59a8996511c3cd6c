"""Train a group of runs on cached features together, as one stacked model.

Every run of the group is a :class:`~lncr.training.trainer.Trainer` of its own — its folder,
settings check, lock, channel statistics, loaders, validation, metrics, TensorBoard events,
``best.pt``/``last.pt`` and ``done.json`` are exactly a lone run's — and only the optimiser
steps are shared: the runs that stand at the same epoch with the same number of training
slides and the same bag size step together through
:func:`lncr.training.stacked_head.stacked_forward`, with their parameters and optimiser state
stacked along a unit axis for the epoch and written back into each run at its end. Each run
keeps its own sampling, dropout masks (from a generator seeded as the lone run seeds the global
one), schedule, stopping point and checkpoints, so a group gives each run the results it
would have alone (tested to 1e-5), and a group can be cut, resumed or split freely.

A run resumed in the middle of an epoch finishes that epoch alone, then joins the others.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from lncr.models.mil import freeze_batch_norm
from lncr.training.run_state import epoch_seed
from lncr.training.stacked_head import (
    HeadShape,
    draw_masks,
    stack_parameters,
    stacked_forward,
    unstack_parameters,
)
from lncr.training.trainer import Stopped, Trainer

#: ``stop_after(run index, epoch, step)``: True ends that run's call there (a rung's end).
GroupStop = Callable[[int, int, int | None], bool]


@dataclass
class Member:
    """One run of the group and where it stands."""

    index: int
    trainer: Trainer
    epoch: int = 0
    step: int = 0
    done: bool = False
    error: Exception | None = None
    generator: torch.Generator | None = None
    began: float = 0.0  # when the member's current epoch began (its progress's seconds)
    outputs: list = field(default_factory=list)


def _stack_state(optimisers: list[torch.optim.Optimizer], names: list[list[str]],
                 stacked: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
    """An optimiser of the members' kind and settings over the stacked parameters, its state
    the members' states stacked (the step count is shared: the members stepped together)."""
    first = optimisers[0]
    groups = []
    for group, group_names in zip(first.param_groups, names):
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [stacked[n] for n in group_names]})
    optimiser = type(first)(groups)
    for gi, group_names in enumerate(names):
        for pi, name in enumerate(group_names):
            states = [o.state.get(o.param_groups[gi]["params"][pi], {}) for o in optimisers]
            if not states[0]:
                continue
            steps = {float(s["step"]) for s in states if "step" in s}
            if len(steps) > 1 or any(not s for s in states):
                raise RuntimeError(f"runs stepping together have taken different numbers of "
                                   f"optimiser steps ({sorted(steps)}): they cannot share one")
            optimiser.state[stacked[name]] = {
                k: (v.clone() if k == "step" else torch.stack([s[k] for s in states]))
                if isinstance(v, torch.Tensor) else v for k, v in states[0].items()}
    return optimiser


def _unstack_state(optimiser: torch.optim.Optimizer, optimisers: list[torch.optim.Optimizer],
                   names: list[list[str]], stacked: dict[str, torch.Tensor]) -> None:
    """Write the stacked optimiser's state back into each member's optimiser."""
    for i, own in enumerate(optimisers):
        for gi, group_names in enumerate(names):
            for pi, name in enumerate(group_names):
                state = optimiser.state.get(stacked[name])
                if not state:
                    continue
                own.state[own.param_groups[gi]["params"][pi]] = {
                    k: (v.clone() if k == "step" else v[i].clone())
                    if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _parameter_names(trainer: Trainer) -> list[list[str]]:
    """The names of each optimiser group's parameters, in the optimiser's order."""
    by_id = {id(p): n for n, p in trainer.model.named_parameters()}
    return [[by_id[id(p)] for p in group["params"]] for group in trainer.optimiser.param_groups]


class GroupTrainer:
    """Train ``trainers`` (runs on cached features, one process, one device) together."""

    def __init__(self, trainers: list[Trainer], stop_after: GroupStop | None = None):
        self.members = [Member(i, t) for i, t in enumerate(trainers)]
        self.stop_after = stop_after
        self.device = trainers[0].dev if trainers else torch.device("cpu")
        self.chunk_size = len(trainers)  # after run(): the most runs that trained together

    def run(self) -> list[Member]:
        """Train every member to its last epoch or stopping point; the members, each with
        ``done`` or the ``error`` that ended it (the others go on)."""
        with contextlib.ExitStack() as stack:
            ready = [m for m in self.members if self._start(m, stack)]
            try:
                for chunk in self._chunks(ready):
                    if self._train(chunk):
                        break  # stopped on purpose: the call ends here, for every chunk
            finally:
                for m in ready:
                    if m.trainer.writer is not None:
                        m.trainer.writer.close()
        return self.members

    def _chunks(self, members: list[Member]) -> list[list[Member]]:
        """The members in groups that fit the device's free memory
        (:mod:`lncr.training.group_memory`), trained one after another."""
        from lncr.training.group_memory import fitting_size, free_bytes, run_bytes

        if not members:
            return []
        t = members[0].trainer
        per_run = run_bytes(t.feature_dim, HeadShape.of(t.model),
                            max(m.trainer.settings.bag_size for m in members),
                            t.settings.bags_per_step)
        size = fitting_size(len(members), per_run, free_bytes(self.device))
        self.chunk_size = size
        return [members[i:i + size] for i in range(0, len(members), size)]

    def _start(self, m: Member, stack: contextlib.ExitStack) -> bool:
        """Prepare one run as a lone run does (finished runs are left alone)."""
        t = m.trainer
        if t.finished and not t.force:
            m.done = True
            return False
        try:
            t.check_sides()
            stack.enter_context(t.lock())
            if t.cache is None or t.ctx.distributed:
                raise ValueError("only runs on cached features, in one process, train in a "
                                 "group")
            t.setup()
        except Exception as exc:  # recorded for this run; the group goes on
            m.error = exc
            return False
        m.epoch, m.step = t.start_epoch, t.start_step
        m.began = time.perf_counter()
        return True

    def _train(self, members: list[Member]) -> bool:
        """Train ``members`` epoch by epoch; True when ``stop_after`` ended the call."""
        live = list(members)
        while live:
            epoch = min(m.epoch for m in live)
            now = [m for m in live if m.epoch == epoch]
            steppers = [m for m in now if not m.step]
            for m in [m for m in now if m.step]:  # resumed mid-epoch: finish it alone
                self._guard(m, lambda m=m: self._lone_epoch(m, epoch))
            for subset in self._lockstep_sets(steppers):
                try:
                    self._stacked_epoch(subset, epoch)
                except Stopped:  # asked to end the call mid-epoch (an interruption on purpose)
                    return True
                except Exception as exc:  # a step failed (a damaged features file): these
                    for m in subset:      # runs fail, the others go on
                        m.error = exc
            for m in now:
                if m.error is None and not m.done:
                    self._guard(m, lambda m=m: self._end_epoch(m, epoch))
            live = [m for m in live if m.error is None and not m.done]
        return False

    @staticmethod
    def _lockstep_sets(members: list[Member]) -> list[list[Member]]:
        """Members that take the same steps: as many training slides, the same bag size."""
        sets: dict[tuple, list[Member]] = {}
        for m in members:
            t = m.trainer
            sets.setdefault((len(t.train), t.settings.bag_size), []).append(m)
        return list(sets.values())

    def _guard(self, m: Member, work: Callable[[], None]) -> None:
        try:
            work()
        except Stopped:
            m.done = True
        except Exception as exc:  # this run failed (diverged, a file); the others go on
            m.error = exc

    def _lone_epoch(self, m: Member, epoch: int) -> None:
        m.outputs = m.trainer.train_epoch(epoch, self._stop_for(m))
        m.step = 0

    def _stop_for(self, m: Member):
        if self.stop_after is None:
            return None
        return lambda epoch, step: self.stop_after(m.index, epoch, step)

    def _end_epoch(self, m: Member, epoch: int) -> None:
        """Validate, record, checkpoint; stop at the member's stopping point or last epoch."""
        t = m.trainer
        t.end_epoch(epoch, m.outputs, m.began)
        m.epoch, m.outputs, m.began = epoch + 1, [], time.perf_counter()
        if self.stop_after is not None and self.stop_after(m.index, epoch, None):
            m.done = True
        elif m.epoch >= t.settings.epochs:
            t.finish()
            m.done = True

    def _stacked_epoch(self, members: list[Member], epoch: int) -> None:
        """One epoch of every member in ``members``, stepping together."""
        trainers = [m.trainer for m in members]
        first = trainers[0]
        shape = HeadShape.of(first.model)
        names = _parameter_names(first)
        stacked = stack_parameters([t.model for t in trainers])
        optimiser = _stack_state([t.optimiser for t in trainers], names, stacked)
        for t, m in zip(trainers, members):
            m.generator = torch.Generator(self.device).manual_seed(
                epoch_seed(t.spec.seed, epoch, t.ctx.rank, 0))
            t.prior, m.outputs = [], []
            t.sampler.set_epoch(epoch, 0)
            t.net.train()
            if t.settings.batch_norm == "frozen":
                freeze_batch_norm(t.net)
        loaders = [iter(t.train_loader) for t in trainers]
        every = first.settings.checkpoint_every
        steps = -(-len(first.sampler.share(epoch, 0)) // first.settings.bags_per_step)
        for step in range(1, steps + 1):
            batches = [next(it) for it in loaders]
            self._step(members, batches, stacked, optimiser, shape)
            for t in trainers:
                if t.on_step is not None:
                    t.on_step(epoch, step, steps)
            if every and step % every == 0 and step < steps:
                self._mid_epoch_checkpoint(members, epoch, step, stacked, optimiser, names)
        unstack_parameters(stacked, [t.model for t in trainers])
        _unstack_state(optimiser, [t.optimiser for t in trainers], names, stacked)
        for t in trainers:
            with warnings.catch_warnings():
                # The member's own optimiser did not step (the stacked one did, for it):
                # the schedule is where the lone run's would be, PyTorch's warning is moot.
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                        UserWarning)
                t.scheduler.step()

    def _step(self, members: list[Member], batches: list, stacked: dict[str, torch.Tensor],
              optimiser: torch.optim.Optimizer, shape: HeadShape) -> None:
        """One optimiser step of every member on its own batch."""
        first = members[0].trainer
        x = torch.stack([m.trainer.inputs(b[0]) for m, b in zip(members, batches)])
        labels = torch.stack([b[2] for b in batches]).to(self.device)
        masks = draw_masks(shape, [m.generator for m in members], x.shape[1], x.shape[2],
                           self.device) if first.net.training else None
        amp = first.amp
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            logits, _ = stacked_forward(stacked, x, shape, masks)
        logits = logits.float()
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        optimiser.zero_grad(set_to_none=True)
        losses.mean(dim=1).sum().backward()
        optimiser.step()
        probabilities = torch.sigmoid(logits.detach()).tolist()
        for m, b, p, loss in zip(members, batches, probabilities, losses.detach().tolist()):
            m.outputs += [(int(s), pi, li) for s, pi, li in zip(b[3], p, loss)]

    def _mid_epoch_checkpoint(self, members: list[Member], epoch: int, step: int,
                              stacked: dict[str, torch.Tensor],
                              optimiser: torch.optim.Optimizer, names: list[list[str]]) -> None:
        """Each member's ``last.pt`` in the middle of an epoch, as its lone run writes it (its
        dropout generator's state as the run's RNG state)."""
        trainers = [m.trainer for m in members]
        unstack_parameters(stacked, [t.model for t in trainers])
        _unstack_state(optimiser, [t.optimiser for t in trainers], names, stacked)
        saved = torch.get_rng_state()
        try:
            for m, t in zip(members, trainers):
                t.prior = list(m.outputs)
                torch.set_rng_state(m.generator.get_state())
                t.checkpoint(epoch, step, t.prior)
        finally:
            torch.set_rng_state(saved)
        if self.stop_after is not None and any(self.stop_after(m.index, epoch, step)
                                               for m in members):
            raise Stopped


def train_group(trainers: list[Trainer], stop_after: GroupStop | None = None
                ) -> list[tuple[Path, Exception | None]]:
    """Train runs together (:class:`GroupTrainer`); each run's folder and its error (None
    when it trained or was already finished)."""
    members = GroupTrainer(trainers, stop_after).run()
    return [(m.trainer.folder, m.error) for m in members]
