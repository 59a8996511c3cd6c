"""Describe bags of tiles: patient-level sides, deterministic draws, filling small slides."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from lncr.training.bags import BagDataset, eval_indices, train_indices

from conftest import tiled_entries


@pytest.fixture
def entries(tiled):
    return tiled_entries(tiled, "HE", "20x")


class DescribeSlideEntries:
    def it_labels_every_slide_with_its_patients_side(self, entries):
        sides = {e.patient_id: e.split for e in entries}
        assert {sides["EXT-001"], sides["EXT-002"]} == {"external"}
        assert set(sides.values()) == {"train", "val", "external"}
        assert all(e.n_tiles > 0 and e.label in (0, 1) for e in entries)


class DescribeDraws:
    def it_draws_distinct_tiles_when_a_slide_has_enough(self):
        idx = train_indices(50, 16, seed=1, epoch=0, slide=3)
        assert len(idx) == 16 and len(set(idx.tolist())) == 16

    def it_repeats_tiles_to_fill_the_bag_of_a_small_slide(self):
        idx = train_indices(5, 16, seed=1, epoch=0, slide=3)
        assert len(idx) == 16 and set(idx.tolist()) == set(range(5))

    def it_depends_only_on_seed_epoch_and_slide(self):
        a = train_indices(50, 8, seed=1, epoch=2, slide=3)
        assert (a == train_indices(50, 8, seed=1, epoch=2, slide=3)).all()
        assert (a != train_indices(50, 8, seed=1, epoch=3, slide=3)).any()

    def it_spreads_evaluation_tiles_over_the_slide(self):
        idx = eval_indices(1000, 128)
        assert len(idx) == 128 and idx[0] == 0 and idx[-1] == 999
        assert (eval_indices(40, 128) == list(range(40))).all()


class DescribeBagDataset:
    def it_gives_uint8_bags_through_a_dataloader(self, entries):
        train = [e for e in entries if e.split == "train"]
        ds = BagDataset(train, bag_size=8, train=True, seed=0)
        loader = DataLoader(ds, batch_size=2, num_workers=1)
        bags, labels, idx = next(iter(loader))
        assert bags.dtype == torch.uint8 and bags.shape == (2, 8, 3, 128, 128)
        assert labels.tolist() == [float(train[0].label), float(train[1].label)]

    def it_draws_new_bags_each_epoch_and_the_same_on_resume(self, entries):
        ds = BagDataset(entries, bag_size=4, train=True, seed=0)
        first = ds[0][0]
        ds.set_epoch(1)
        assert not torch.equal(first, ds[0][0])
        ds.set_epoch(0)
        assert torch.equal(first, ds[0][0])

    def it_evaluates_on_a_fixed_capped_set(self, entries):
        ds = BagDataset(entries, bag_size=4, train=False, eval_tiles=6)
        a, b = ds[1][0], ds[1][0]
        assert torch.equal(a, b) and a.shape[0] == min(6, entries[1].n_tiles)
