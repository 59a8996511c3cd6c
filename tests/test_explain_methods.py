"""The explanation methods on their own: Grad-CAM of a bag, DCCS, cluster scoring, the
pointing game and the outcome association."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lncr.explain.cluster_metrics import cluster_accuracy, clustering_scores, hungarian_match
from lncr.explain.dccs import DCCS, DCCSConfig, DCCSTrainer, assign, augment, fit_dccs
from lncr.explain.gradcam import BagCAM, find_cam_layer, peak, vit_tokens_to_grid
from lncr.models.mil import build_mil


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_mil("resnet18", 8, 1, 2, None, 8, 0.0).eval()


class DescribeAuthorsGradCAM:
    def it_finds_the_last_conv2d_as_the_authors_did(self):
        torch.manual_seed(0)
        model = build_mil("resnet50", 8, 1, 2, None, 8, 0.0).eval()
        layer, reshape, name = find_cam_layer(model.encoder, 64, "last_conv")
        assert name == "layer4.2.conv3" and reshape is None

    def it_keeps_negative_evidence_without_relu(self, tiny_model):
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with BagCAM(tiny_model, 64, "gradcam", relu=False) as raw:
            maps, _ = raw(x, outcome=1)
            acts = raw._cam.activations_and_grads.activations[0]
            grads = raw._cam.activations_and_grads.gradients[0]
        with BagCAM(tiny_model, 64, "gradcam") as cam:
            relu_maps, _ = cam(x, outcome=1)
        assert maps.shape == relu_maps.shape == (4, 64, 64)
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
        weighted = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
        assert (weighted < 0).any()  # there was evidence against: ReLU would drop it
        assert not np.allclose(maps, relu_maps, atol=1e-3)

    def it_refuses_no_relu_for_other_methods(self, tiny_model):
        with pytest.raises(ValueError, match="cam_relu"):
            BagCAM(tiny_model, 64, "layercam", relu=False)


class DescribeBagCAM:
    def it_gives_one_map_per_tile_at_input_size_scaled_to_unit_range(self, tiny_model):
        x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with BagCAM(tiny_model, 64) as cam:
            maps, probability = cam(x, outcome=1)
        assert maps.shape == (5, 64, 64) and maps.dtype == np.float32
        assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-4)
        with torch.no_grad():
            assert probability == pytest.approx(float(torch.sigmoid(tiny_model(x[None])[0])[0]),
                                                abs=1e-6)

    def it_changes_when_the_target_tiles_content_changes(self, tiny_model):
        g = torch.Generator().manual_seed(2)
        x = torch.randn(4, 3, 64, 64, generator=g)
        with BagCAM(tiny_model, 64) as cam:
            before, _ = cam(x, outcome=1)
            changed = x.clone()
            changed[2, :, :32, :] = changed[2, :, :32, :].flip(1) * 3.0
            after, _ = cam(changed, outcome=1)
        assert np.abs(after[2] - before[2]).max() > 0.05

    def it_explains_the_outcome_asked_for(self, tiny_model):
        x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        with BagCAM(tiny_model, 64) as cam:
            cr, _ = cam(x, outcome=1)
            non, _ = cam(x, outcome=0)
        assert not np.allclose(cr, non)

    def it_differentiates_the_logit_so_a_confident_bag_still_has_maps(self):
        import copy

        torch.manual_seed(0)
        model = build_mil("resnet18", 8, 1, 2, None, 8, 0.0).eval()
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
        with BagCAM(model, 64) as cam:
            plain, _ = cam(x, outcome=1)
        confident = copy.deepcopy(model)
        with torch.no_grad():  # P(CR) rounds to exactly 1 in float32: σ' is 0
            confident.classifier.bias += 60.0
        with BagCAM(confident, 64) as cam:
            maps, probability = cam(x, outcome=1)
        assert probability == 1.0
        # the logit's gradients are unchanged by the bias: the same maps, none of them flat
        assert (maps.max(axis=(1, 2)) > maps.min(axis=(1, 2))).all()
        assert np.allclose(maps, plain, atol=1e-5)

    def it_rejects_unknown_methods_and_layers(self, tiny_model):
        with pytest.raises(ValueError, match="cam_method"):
            BagCAM(tiny_model, 64, "scorecam")
        with pytest.raises(ValueError, match="not a module"):
            find_cam_layer(tiny_model.encoder, 64, "layer9")

    def it_finds_the_last_spatial_layer(self, tiny_model):
        assert find_cam_layer(tiny_model.encoder, 64)[2] == "layer4"


def test_vit_tokens_become_a_grid_without_the_class_token():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).view(2, 17, 3)
    grid = vit_tokens_to_grid(tokens)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[0, :, 0, 0], tokens[0, 1])  # token 0 (class) dropped


def test_the_peak_is_placed_in_level0_coordinates_of_the_centred_crop():
    cam = np.zeros((4, 4), np.float32)
    cam[0, 3] = 1.0  # top-right cell
    x, y = peak(cam, size0=400, x=1000, y=2000, crop_fraction=0.5)
    assert (x, y) == (1000 + 100 + 3.5 * 50, 2000 + 100 + 0.5 * 50)
    assert np.isnan(peak(np.zeros((4, 4)), size0=400, x=0, y=0)).all()  # flat: no maximum


class DescribeFlatMaps:
    def it_draws_a_flat_or_undefined_map_as_no_evidence_without_warnings(self):
        import warnings

        from lncr.explain.gradcam import overlay

        tile = np.full((32, 32, 3), 200, np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NumPy's "invalid value encountered in cast"
            flat = overlay(tile, np.full((8, 8), np.nan, np.float32))
            zero = overlay(tile, np.zeros((8, 8), np.float32))
        assert flat.dtype == np.uint8 and np.array_equal(flat, zero)


class DescribeOverlay:
    def it_blends_the_jet_map_and_the_tile_as_the_authors_without_rescaling(self):
        import cv2

        from lncr.explain.gradcam import overlay

        rng = np.random.default_rng(0)
        tile = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        cam = rng.random((16, 16)).astype(np.float32)
        jet = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)  # BGR, as gradCAM.py
        expected = np.rint(jet * 0.6 + cv2.cvtColor(tile, cv2.COLOR_RGB2BGR) * 0.4)
        assert np.array_equal(overlay(tile, cam, 0.6), expected[..., ::-1].astype(np.uint8))
        dark = np.full((16, 16, 3), 10, np.uint8)  # no division by the blend's maximum
        assert overlay(dark, np.zeros((16, 16), np.float32)).max() == round(0.6 * 128 + 4)


class DescribeHungarianAccuracy:
    def it_is_one_for_a_relabelled_perfect_clustering(self):
        assert cluster_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0

    def it_matches_one_to_one_and_counts_the_best_matching(self):
        # clusters: 0→a (2 hits), 1→b (1 hit); cluster 1 cannot also be a.
        y_true = ["a", "a", "a", "b", "b"]
        y_pred = [0, 0, 1, 1, 1]
        assert hungarian_match(y_true, y_pred) == {0: "a", 1: "b"}
        assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 5)

    def it_counts_unmatched_extra_clusters_as_errors(self):
        assert cluster_accuracy([0, 0, 0, 0], [0, 0, 1, 2]) == pytest.approx(0.5)

    def it_reports_nmi_and_ari_too(self):
        scores = clustering_scores([0, 0, 1, 1], [1, 1, 0, 0])
        assert scores == {"accuracy": 1.0, "nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
        with pytest.raises(ValueError, match="labels"):
            cluster_accuracy([0, 1], [0])


def _toy(n: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """Two kinds of 16-px images: bright left half or bright top half, with noise."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(n, 3, 16, 16, generator=g)
    y = np.arange(n) % 2
    x[y == 0, :, :, :8] += 0.8
    x[y == 1, :, :8, :] += 0.8
    return x.clamp(0, 1), y


class DescribeDCCS:
    def it_augments_every_image_differently_within_range(self):
        x, _ = _toy(8)
        cfg = DCCSConfig()
        out = augment(x, cfg.augment, torch.Generator().manual_seed(0))
        again = augment(x, cfg.augment, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, again) and not torch.allclose(out, x)

    def it_lowers_each_loss_with_its_own_steps_on_fixed_draws(self):
        x, _ = _toy()
        cfg = DCCSConfig(clusters=2, style_dim=4, lr=1e-3, seed=0)
        torch.manual_seed(0)
        trainer = DCCSTrainer(DCCS(3, 16, cfg))
        trainer.model.train()
        draws = trainer.inputs_for(x)
        before = trainer.critic_loss(x, draws["prior"], draws["alpha"]).item()
        for _ in range(5):
            trainer.critic_step(x, draws)
        assert trainer.critic_loss(x, draws["prior"], draws["alpha"]).item() < before
        enc = trainer.encoder_losses(x, draws["x_aug"], draws["permutation"])
        before = sum(v.item() for v in enc.values())
        for _ in range(5):
            trainer.encoder_step(x, draws)
        enc = trainer.encoder_losses(x, draws["x_aug"], draws["permutation"])
        assert sum(v.item() for v in enc.values()) < before

    @pytest.mark.parametrize("encoder", ["resnet", "plain"])
    def it_encodes_any_tile_size_into_style_and_category(self, encoder):
        cfg = DCCSConfig(clusters=3, style_dim=5, encoder=encoder)
        for size in (16, 48, 224):
            model = DCCS(3, size, cfg).eval()
            z, logits, features = model.latent(torch.rand(2, 3, size, size))
            assert z.shape == (2, 8) and logits.shape == (2, 3)
            assert features.shape == (2, model.encoder.feature_dim)

    def it_uses_the_authors_residual_encoder_and_augmentation_by_default(self):
        from lncr.explain.dccs import PUBLISHED_AUGMENT, ResNetEncoder

        cfg = DCCSConfig()
        assert cfg.epochs == 3000 and cfg.augment == PUBLISHED_AUGMENT
        encoder = DCCS(3, 224, cfg).encoder
        assert isinstance(encoder, ResNetEncoder)
        widths = [b.body[-1].out_channels for b in encoder.features]
        assert widths == [64, 128, 256, 512]  # the authors' Encoder96: 224 px → 14 × 14

    def it_jitters_colour_in_a_random_order_per_image_as_torchvisions_colorjitter(self):
        from torchvision.transforms.v2 import functional as tvf

        x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        # brightness then contrast differs from contrast then brightness once values clip
        settings = {"crop_scale": (1.0, 1.0), "flips": False, "channel_shuffle": False,
                    "brightness": 0.9, "contrast": 0.9, "jitter_order": "random"}
        out = augment(x, settings, torch.Generator().manual_seed(3))
        plain = {k: v for k, v in settings.items() if k not in ("brightness", "contrast")}
        x = augment(x, plain, torch.Generator().manual_seed(3))  # the same crops, no jitter
        g = torch.Generator().manual_seed(3)
        torch.rand(6, generator=g), torch.rand(6, generator=g)  # the crop's draws
        torch.rand(6, generator=g), torch.rand(6, generator=g)
        factors = 1.0 + torch.tensor([0.9, 0.9, 0.0]) * (2 * torch.rand(6, 3, generator=g) - 1)
        torch.rand(6, generator=g)  # the hue shifts (none here)
        orders = set()
        for i in range(6):
            img = x[i]
            order = torch.randperm(4, generator=g).tolist()
            for k in order:
                img = (tvf.adjust_brightness(img, float(factors[i, 0])) if k == 0 else
                       tvf.adjust_contrast(img, float(factors[i, 1])) if k == 1 else
                       tvf.adjust_saturation(img, float(factors[i, 2])) if k == 2 else img)
            orders.add(tuple(k for k in order if k < 2))
            assert torch.allclose(out[i], img, atol=1e-6)
        assert len(orders) == 2  # both orders occur among six images

    def it_builds_the_authors_encoder96_when_asked(self):
        cfg = DCCSConfig(encoder="published")
        encoder = DCCS(3, 224, cfg).encoder
        convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(m.bias is None for m in convs if m.kernel_size == (3, 3))
        assert all(m.bias is not None for m in convs if m.kernel_size == (1, 1))
        pool, conv = encoder.last[-3], encoder.last[-2]
        assert isinstance(pool, torch.nn.AvgPool2d) and pool.kernel_size == 6
        assert conv.kernel_size == (2, 2) and (conv.in_channels, conv.out_channels) == (512, 56)
        z, logits, features = DCCS(3, 224, cfg).eval().latent(torch.rand(2, 3, 224, 224))
        assert z.shape == (2, 56) and features.shape == (2, 512 * 4 * 4)
        with pytest.raises(ValueError, match="cluster_tile_size=224"):
            DCCS(3, 48, cfg)

    def it_flips_only_horizontally_with_the_published_augmentation(self):
        # brightness grows down the rows: only a vertical flip can make it fall
        x = torch.linspace(0, 1, 16).view(1, 1, 16, 1).expand(64, 3, 16, 16).contiguous()

        def falling(flips) -> torch.Tensor:
            out = augment(x, {"crop_scale": (0.5, 1.0), "flips": flips},
                          torch.Generator().manual_seed(1))
            return out[:, 0, -1, :].mean(1) < out[:, 0, 0, :].mean(1)

        assert not falling("horizontal").any() and falling(True).any()

    def it_shifts_hue_when_asked(self):
        x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        base = {"crop_scale": (1.0, 1.0), "flips": False, "brightness": 1e-6}
        plain = augment(x, base, torch.Generator().manual_seed(1))
        hued = augment(x, {**base, "hue": 0.125}, torch.Generator().manual_seed(1))
        assert not torch.allclose(plain, hued, atol=1e-3)

    def it_follows_four_critic_steps_with_one_encoder_step(self):
        x, _ = _toy(16)
        trainer = DCCSTrainer(DCCS(3, 16, DCCSConfig(clusters=2, style_dim=4)))
        kinds = ["critic" in trainer.step(x) for _ in range(10)]
        assert kinds == [True, True, True, True, False] * 2

    def it_is_reproducible_and_assigns_every_image_a_cluster(self):
        x, _ = _toy(32)
        cfg = DCCSConfig(clusters=2, style_dim=4, epochs=2, batch_size=16)
        m1, h1 = fit_dccs(x, cfg)
        m2, h2 = fit_dccs(x, cfg)
        z1, c1 = assign(m1, x)
        z2, _ = assign(m2, x)
        assert h1 == h2 and np.array_equal(z1, z2)
        assert z1.shape == (32, 6) and set(c1) <= {0, 1} and len(h1) == 2


@pytest.fixture()
def phantom(tmp_path):
    """A one-slide phantom truth: a 10×10 mask (downsample 16), lesion in the top-left 4×4."""
    from lncr.explain.phantom_truth import PhantomTruth

    mask = np.ones((10, 10), np.uint8)
    mask[:4, :4] = 3  # crescent
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "P_HE.png")
    codes = {"background": 0, "tissue": 1, "fibrosis_inflammation": 2, "crescent": 3,
             "sclerosis": 4, "wire_loop": 5}
    (tmp_path / "truth.json").write_text(json.dumps({
        "generator": {"mask_codes": codes, "mask_downsample": 16},
        "patients": {"P": {"slides": {"HE": {"mask": "masks/P_HE.png"}}}}}))
    return PhantomTruth(tmp_path)


class DescribePointingGame:
    def it_reads_lesion_fractions_and_classes_of_tiles(self, phantom):
        x, y, s = [0, 64, 80], [0, 0, 80], [64, 64, 80]
        assert list(phantom.lesion_fraction("P", "HE", x, y, s)) == [1.0, 0.0, 0.0]
        assert phantom.tile_classes("P", "HE", x, y, s) == ["crescent", "tissue", "tissue"]
        assert list(phantom.on_lesion("P", "HE", [10, 70], [10, 10])) == [True, False]
        assert list(phantom.on_lesion("P", "HE", [70], [10], tolerance=16)) == [True]

    def it_scores_top_attention_tiles_against_random_tiles(self, phantom):
        from lncr.explain.pointing import attention_pointing

        # 4 tiles of 32 px: only tile 0 (top-left) is on the lesion; it has top attention.
        scores = pd.DataFrame({"index": [0, 1, 2, 3], "x": [0, 96, 0, 96], "y": [0, 0, 96, 96],
                               "size0": [32.0] * 4, "relative_attention": [3.0, 0.5, 0.3, 0.2],
                               "effect": [0.0] * 4})
        summary, table = attention_pointing(phantom, [("P", "HE", scores)], top_k=1)
        assert summary["hit_rate"] == 1.0 and summary["random_baseline"] == 0.25
        assert summary["ratio"] == 4.0

    def it_scores_cam_peaks_and_energy_against_random_points_and_tiles(self, phantom):
        from lncr.explain.pointing import cam_pointing

        # Tile (32, 32) of 64 px: its 4×4 map's pixel centres are at 40, 56, 72, 88; the
        # lesion covers < 64, so the top-left 2×2 map pixels (a quarter) are on it.
        tiles = pd.DataFrame({"patient_id": ["P"] * 3, "stain": ["HE"] * 3, "index": [0, 1, 2],
                              "x": [32] * 3, "y": [32] * 3, "size0": [64.0] * 3,
                              "crop_fraction": [1.0] * 3})
        maps = np.zeros((3, 4, 4), np.float32)
        maps[0, 0, 0] = 1.0  # peak on the lesion, all mass there
        maps[1, 3, 3] = 1.0  # peak off the lesion
        # maps[2] is flat: no maximum, it scores as a uniform map (a random point)
        every = pd.DataFrame({"x": [32, 96], "y": [32, 96], "size0": [64.0, 64.0],
                              "crop_fraction": [1.0, 1.0]})
        summaries, table = cam_pointing(phantom, tiles, maps, {("P", "HE"): every},
                                        tolerance=0)
        assert list(table.hit) == [1.0, 0.0, 0.25] and list(table.flat) == [False, False, True]
        assert list(table.random_point) == [0.25] * 3
        assert list(table.energy) == pytest.approx([1.0, 0.0, 0.25])
        peak = summaries["peak_vs_points"]
        assert peak["hit_rate"] == pytest.approx(1.25 / 3) and peak["random_baseline"] == 0.25
        assert summaries["energy_vs_uniform"]["hit_rate"] == pytest.approx(1.25 / 3)
        # a random tile of the slide: half the time the lesioned one, a quarter of it lesion
        assert summaries["peak_vs_random_tiles"]["random_baseline"] == pytest.approx(0.125)
        assert peak["flat_maps"] == 1

    def it_grows_lesions_by_the_tolerance_and_reads_crops(self, phantom):
        from lncr.explain.pointing import cam_pointing

        grid = phantom.lesion_grid("P", "HE", 32, 32, 64, (4, 4))
        assert grid.sum() == 4 and grid[:2, :2].all()
        assert phantom.lesion_grid("P", "HE", 32, 32, 64, (4, 4), tolerance=16).sum() == 9
        # half-side centred crop of a 128-px tile at (0, 0): the square (32, 32) of 64 px
        tiles = pd.DataFrame({"patient_id": ["P"], "stain": ["HE"], "index": [0], "x": [0],
                              "y": [0], "size0": [128.0], "crop_fraction": [0.5]})
        _, table = cam_pointing(phantom, tiles, np.eye(4, dtype=np.float32)[None], tolerance=0)
        assert table.lesion_fraction.iloc[0] == 0.25 and table.energy.iloc[0] == 0.5

    def it_finds_the_outcome_the_lesions_are_evidence_for(self, phantom, tmp_path):
        truth = json.loads((tmp_path / "truth.json").read_text())
        truth["patients"] = {"A": {"label": 0, "burden": 0.7}, "B": {"label": 1, "burden": 0.2}}
        (tmp_path / "truth.json").write_text(json.dumps(truth))
        from lncr.explain.phantom_truth import PhantomTruth

        assert PhantomTruth(tmp_path).lesion_outcome() == 0
        truth["patients"]["B"]["burden"] = 0.7
        (tmp_path / "truth.json").write_text(json.dumps(truth))
        with pytest.raises(ValueError, match="does not differ"):
            PhantomTruth(tmp_path).lesion_outcome()


def test_outcome_association_per_cluster_matches_scipys_fisher_test():
    from scipy.stats import fisher_exact

    from lncr.explain.cluster_run import association

    tiles = pd.DataFrame({"patient_id": list("aabbccdd"), "label": [1, 1, 1, 1, 0, 0, 0, 0],
                          "cluster": [0, 0, 0, 1, 1, 1, 1, 0]})
    table, overall = association(tiles, 3)
    row = table.set_index("cluster").loc[0]
    assert (row.tiles_cr, row.tiles_noncr) == (3, 1)
    assert row.fisher_p == pytest.approx(fisher_exact([[3, 1], [1, 3]]).pvalue)
    assert row.patient_mean_cr == pytest.approx(0.75) and row.patient_mean_noncr == 0.25
    assert table.set_index("cluster").loc[2].tiles == 0 and overall["dof"] == 1
