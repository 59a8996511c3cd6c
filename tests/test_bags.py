"""Describe bags of tiles: patient-level sides, deterministic draws, filling small slides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import tiled_entries
from lncr.data.bags import BagDataset, EpochSampler, collate_bags, eval_indices, train_indices


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

    @pytest.mark.parametrize("n,bag", [(3, 4), (30, 64), (5, 16), (7, 8), (8, 8), (1, 32)])
    def it_fills_a_small_slides_bag_as_the_authors_sampler(self, n, bag):
        # ModelTrain.py: every tile ⌊bag/n⌋ times, the remainder without replacement
        counts = np.array([np.bincount(train_indices(n, bag, seed, 0, 0), minlength=n)
                           for seed in range(400)])
        assert (counts.sum(axis=1) == bag).all()
        assert counts.min() == bag // n and counts.max() == -(-bag // n)
        assert ((counts > bag // n).sum(axis=1) == bag % n).all()
        if bag % n:  # which tiles get the extra copy: uniform, each with chance (bag mod n)/n
            share = (counts > bag // n).mean(axis=0)
            assert np.allclose(share, (bag % n) / n, atol=0.1)

    def it_depends_only_on_seed_epoch_and_slide(self):
        a = train_indices(50, 8, seed=1, epoch=2, slide=3)
        assert (a == train_indices(50, 8, seed=1, epoch=2, slide=3)).all()
        assert (a != train_indices(50, 8, seed=1, epoch=3, slide=3)).any()

    def it_spreads_evaluation_tiles_over_the_slide(self):
        idx = eval_indices(1000, 128)
        assert len(idx) == 128 and idx[0] == 0 and idx[-1] == 999
        assert (eval_indices(40, 128) == list(range(40))).all()


class DescribeBagDataset:
    def it_gives_cropped_uint8_bags_through_a_dataloader(self, entries):
        train = [e for e in entries if e.split == "train"]
        ds = BagDataset(train, bag_size=8, train=True, seed=0, crop=96, augment=True, jitter=0.1)
        loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_bags,
                            sampler=[(0, 0), (0, 1)])
        bags, factors, labels, slides = next(iter(loader))
        assert bags.dtype == torch.uint8 and bags.shape == (2, 8, 3, 96, 96)
        assert factors.shape == (2, 8, 3) and ((factors >= 0.9) & (factors <= 1.1)).all()
        assert labels.tolist() == [float(train[0].label), float(train[1].label)]
        assert slides.tolist() == [0, 1]

    def it_draws_new_bags_each_epoch_and_the_same_on_resume(self, entries):
        ds = BagDataset(entries, bag_size=4, train=True, seed=0, crop=96, augment=True)
        first = ds[(0, 0)][0]
        assert not torch.equal(first, ds[(1, 0)][0])
        assert torch.equal(first, ds[(0, 0)][0])

    def it_gives_the_same_bags_whatever_the_number_of_workers(self, entries):
        ds = BagDataset(entries, bag_size=4, train=True, seed=3, crop=96, augment=True, jitter=0.1)
        keys = [(2, i) for i in range(len(entries))]

        def read(workers):
            loader = DataLoader(ds, batch_size=1, num_workers=workers, sampler=keys,
                                collate_fn=collate_bags)
            return [(b[0], b[1]) for b in loader]

        for (a, fa), (b, fb) in zip(read(0), read(2)):
            assert torch.equal(a, b) and torch.equal(fa, fb)

    def it_evaluates_on_a_fixed_capped_centred_set(self, entries):
        ds = BagDataset(entries, bag_size=4, train=False, eval_tiles=6, crop=96, jitter=0.5)
        a, fa = ds[1][:2]
        assert torch.equal(a, ds[1][0]) and a.shape[0] == min(6, entries[1].n_tiles)
        assert (fa == 1).all()  # no jitter outside training
        full = torch.from_numpy(ds.tiles(1, eval_indices(entries[1].n_tiles, 6))).permute(0, 3, 1, 2)
        assert torch.equal(a, full[..., 16:112, 16:112])


class DescribeEpochSampler:
    def it_gives_each_rank_a_disjoint_share_covering_every_slide(self):
        shares = [list(EpochSampler(11, seed=4, rank=r, world=3)) for r in range(3)]
        slides = [s for share in shares for _, s in share]
        assert sorted(slides) == list(range(11))
        assert [len(s) for s in shares] == [4, 4, 3]

    def it_continues_mid_epoch_and_reshuffles_each_epoch(self):
        sampler = EpochSampler(10, seed=1)
        sampler.set_epoch(2)
        full = list(sampler)
        sampler.set_epoch(2, start=4)
        assert list(sampler) == full[4:] and len(sampler) == 6
        sampler.set_epoch(3)
        assert [s for _, s in sampler] != [s for _, s in full]
