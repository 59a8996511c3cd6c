"""DCCS: deep image clustering with a category-style representation (Zhao et al., ECCV 2020).

An encoder maps an image to a latent ``z = (z_s, z_c)``: a style part ``z_s`` (``style_dim``
values) and a categorical part ``z_c`` (a softmax over ``clusters``); the cluster of an image is
``argmax z_c``. Three terms train it, as in the paper and its official recipe:

- **prior matching** (weight ``beta_adv`` = 1): a WGAN-GP critic tells encoded latents from
  samples of the prior — ``z_c`` a uniformly drawn one-hot vector, ``z_s ~ N(0, style_std²)``
  with ``style_std`` = 0.1 — and the encoder learns to fool it, which pushes ``z_c`` towards
  confident, balanced one-hot assignments. Gradient penalty 10; ``critic_steps`` = 4 critic
  updates per encoder update;
- **mutual information** (``beta_mi`` = 0.5): a Deep-InfoMax-style discriminator learns to tell
  (intermediate feature map, its own latent) pairs from (feature map, another image's latent)
  pairs with a binary cross-entropy; the encoder minimises the same loss, which maximises a
  lower bound of the mutual information between the features and the latent. The official code
  feeds the discriminator the whole flattened map (100,352 values for a ResNet-50-sized map);
  here it is average-pooled to ``pooled × pooled`` first, which keeps memory small;
- **augmentation consistency** (``beta_aug`` = 2): KL(``z_c(x)`` ‖ ``z_c(aug(x))``), so an
  image and its augmented copy fall in the same cluster. Augmentations (batched, on the
  device), :data:`PUBLISHED_AUGMENT` by default — the authors' ``datasets.py``: random resized
  crop (scale 0.4–1, ratio 3/4–4/3), horizontal flip, channel shuffle, colour jitter
  (brightness 0.4 — 0.1 for PAS —, contrast 0.4, saturation 0.4, hue 0.125); or
  :data:`LIGHT_AUGMENT` (crop 0.6–1, both flips, channel shuffle, jitter 0.3), which small
  tile sets at small sizes cluster better with.

Encoder and discriminator share one Adam optimiser, the critic another; both use lr 1e-4 and
betas (0.5, 0.9). The encoder (``encoder``) is ``resnet`` by default, shaped like the authors'
``Encoder96``: an optimised residual down-block, three residual down-blocks (doubling the
width from 64), one residual block, BatchNorm-ReLU, global pooling and a linear layer to
``style_dim + clusters``; the MI discriminator sees the fourth block's map. ``published`` is
``Encoder96`` itself (bias-free 3×3 convolutions, ``AvgPool2d(6)`` and a 2 × 2 convolution;
224-px inputs). ``plain`` is a small stack of strided convolutions for quick CPU runs. No
pretrained weights are involved.

There is no maintained library for DCCS; this module is written from the paper and the recipe
of the authors' code (loss weights, prior, critic schedule, optimiser), not copied from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DCCSConfig:
    """DCCS hyper-parameters (defaults: the paper's and the published study's)."""

    clusters: int = 6
    style_dim: int = 50
    style_std: float = 0.1
    beta_mi: float = 0.5
    beta_adv: float = 1.0
    beta_aug: float = 2.0
    gradient_penalty: float = 10.0
    critic_steps: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 64
    epochs: int = 3000
    encoder: str = "resnet"  # "resnet" (the authors' shape), "published" (theirs) or "plain"
    width: int | None = None  # first layer's channels; None: 64 (resnet) or 32 (plain)
    # The MI discriminator sees the feature map pooled to pooled × pooled (the authors: the
    # whole 512 × 14 × 14 map, a 103-million-parameter first layer; 0 restores that).
    pooled: int = 4
    augment: dict = field(default_factory=lambda: dict(PUBLISHED_AUGMENT))
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


#: The authors' augmentation of DCCS inputs (``datasets.py``; brightness 0.1 for PAS).
#: Its ``ColorJitter`` applies the four adjustments in a random order per image.
PUBLISHED_AUGMENT = {"crop_scale": (0.4, 1.0), "flips": "horizontal", "channel_shuffle": True,
                     "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.125,
                     "jitter_order": "random"}
#: lncr's lighter recipe for small, low-resolution tile sets (the demo).
LIGHT_AUGMENT = {"crop_scale": (0.6, 1.0), "flips": True, "channel_shuffle": True,
                 "jitter": 0.3}


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.2, inplace=True))


class ResBlock(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv3×3 twice), optionally average-pooled by 2;
    ``first`` is the optimised input block (no normalisation before the first conv); ``bias``
    False: the 3×3 convolutions without bias, as the authors' ``layers.py`` (the 1×1 skip keeps
    its bias)."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False,
                 bias: bool = True):
        super().__init__()
        pre = [] if first else [nn.BatchNorm2d(c_in), nn.ReLU()]
        self.body = nn.Sequential(*pre, nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias),
                                  nn.BatchNorm2d(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out or down else nn.Identity()
        self.down = nn.AvgPool2d(2) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.body(x)) + self.down(self.skip(x))


class ResNetEncoder(nn.Module):
    """The authors' DCCS encoder shape (``Encoder96``) for any input size: 4 residual
    down-blocks (fewer for small images), one more block, BN-ReLU, then global pooling and a
    linear layer (``resnet``), or — ``published``, the authors' ``Encoder96`` exactly — 3×3
    convolutions without bias and ``AvgPool2d(6)`` to a 2 × 2 map read by a 2 × 2 convolution
    (which leaves out the last 2 rows and columns of a 224-px input's 14 × 14 map)."""

    def __init__(self, channels: int, size: int, config: DCCSConfig):
        super().__init__()
        w = config.width or 64
        published = config.encoder == "published"
        downs = max(1, min(4, int(math.floor(math.log2(max(size, 4) / 2)))))
        widths = [w * 2 ** min(i, 3) for i in range(downs)]
        bias = not published
        blocks = [ResBlock(channels, widths[0], True, first=True, bias=bias)]
        blocks += [ResBlock(widths[i - 1], widths[i], True, bias=bias) for i in range(1, downs)]
        self.features = nn.Sequential(*blocks)
        out = config.style_dim + config.clusters
        head = (published_head(widths[-1], out, size // 2 ** downs) if published else
                [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], out)])
        self.last = nn.Sequential(ResBlock(widths[-1], widths[-1], False, bias=bias),
                                  nn.BatchNorm2d(widths[-1]), nn.ReLU(), *head)
        self.pool = nn.AdaptiveAvgPool2d(config.pooled) if config.pooled else nn.Identity()
        side = config.pooled or max(1, size // 2 ** downs)
        self.feature_dim = widths[-1] * side * side
        self.style_dim = config.style_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = self.features(x)
        out = self.last(maps)
        return out[:, :self.style_dim], out[:, self.style_dim:], self.pool(maps).flatten(1)


def published_head(channels: int, out: int, side: int) -> list[nn.Module]:
    """``Encoder96``'s head: ``AvgPool2d(6)`` → 2 × 2 map → ``Conv2d(kernel 2)``; it fits maps
    of 12–17 px only (192–287-px inputs), as the authors' code."""
    if not 12 <= side <= 17:
        raise ValueError(f"explain.cluster_encoder=published needs a 192–287-px input (the "
                         f"authors': 224); this one gives a {side}-px map: set "
                         "explain.cluster_tile_size=224 or use cluster_encoder=resnet")
    return [nn.AvgPool2d(6), nn.Conv2d(channels, out, 2), nn.Flatten()]


class DCCSEncoder(nn.Module):
    """Image (B, C, S, S) → (z_s (B, style_dim), z_c logits (B, K), pooled features (B, F))."""

    def __init__(self, channels: int, size: int, config: DCCSConfig):
        super().__init__()
        stem = 1 if size <= 16 else 2  # tiny images (digits) keep their resolution
        inner = size // stem
        downs = max(1, int(math.floor(math.log2(max(inner, 8) / 4))))
        widths = [min((config.width or 32) * 2 ** i, 128) for i in range(downs + 1)]
        layers = [_block(channels, widths[0], stem)]
        layers += [_block(widths[i], widths[i + 1], 2) for i in range(downs)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.pooled)
        self.feature_dim = widths[-1] * config.pooled ** 2
        self.style_dim = config.style_dim
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, 512, bias=False), nn.BatchNorm1d(512),
            nn.LeakyReLU(0.2, inplace=True), nn.Linear(512, config.style_dim + config.clusters))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.pool(self.features(x)).flatten(1)
        out = self.head(features)
        return out[:, :self.style_dim], out[:, self.style_dim:], features


def _mlp(d_in: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, 1024), nn.LeakyReLU(0.2, inplace=True),
                         nn.Linear(1024, 512), nn.LeakyReLU(0.2, inplace=True),
                         nn.Linear(512, 1))


class DCCS(nn.Module):
    """Encoder, prior critic and mutual-information discriminator."""

    def __init__(self, channels: int, size: int, config: DCCSConfig):
        super().__init__()
        self.config = config
        if config.encoder not in ("resnet", "published", "plain"):
            raise ValueError(f"DCCS encoder {config.encoder!r}: use resnet, published or plain")
        self.encoder = (DCCSEncoder if config.encoder == "plain" else ResNetEncoder)(
            channels, size, config)
        latent = config.style_dim + config.clusters
        self.critic = _mlp(latent)
        self.discriminator = _mlp(self.encoder.feature_dim + latent)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z = [z_s, softmax z_c], z_c logits, features) of images in [0, 1]."""
        zs, logits, features = self.encoder((x - self.mean) / self.std)
        return torch.cat([zs, torch.softmax(logits, dim=1)], dim=1), logits, features


def augment(x: torch.Tensor, settings: dict, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop, flips, channel shuffle and colour jitter, per image, batched."""
    from torchvision.ops import roi_align

    from lncr.data.inputs import colour_jitter

    b, c, h, w = x.shape
    dev = x.device
    low, high = settings.get("crop_scale", (0.6, 1.0))

    def uniform(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    area = low + (high - low) * uniform(b)
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * uniform(b))
    cw = (torch.sqrt(area * ratio) * w).clamp(2, w)
    ch = (torch.sqrt(area / ratio) * h).clamp(2, h)
    x0 = (w - cw) * uniform(b)
    y0 = (h - ch) * uniform(b)
    boxes = torch.stack([torch.arange(b, device=dev, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch],
                        dim=1)
    out = roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2,
                    aligned=True)
    flips = settings.get("flips", True)
    if flips:
        flip_h = uniform(b) < 0.5
        flip_v = uniform(b) < 0.5
        out = torch.where(flip_h.view(b, 1, 1, 1), out.flip(3), out)
        if flips != "horizontal":
            out = torch.where(flip_v.view(b, 1, 1, 1), out.flip(2), out)
    if c == 3 and settings.get("channel_shuffle", True):
        order = torch.argsort(torch.rand(b, 3, generator=generator), dim=1).to(dev)
        out = out.gather(1, order.view(b, 3, 1, 1).expand_as(out))
    jitter = float(settings.get("jitter", 0.0))
    amounts = torch.tensor([float(settings.get(k, jitter))
                            for k in ("brightness", "contrast", "saturation")], device=dev)
    if bool((amounts > 0).any()):
        factors = 1.0 + amounts * (2 * uniform(b, 3) - 1)
        if c == 3 and settings.get("jitter_order") == "random":
            out = _jitter_in_random_order(out, factors, float(settings.get("hue", 0.0)),
                                          uniform, generator)
        elif c == 3:
            out = colour_jitter(out, factors)
            out = _hue(out, float(settings.get("hue", 0.0)), uniform)
        else:  # brightness and contrast of grey images
            out = out * factors[:, 0].view(b, 1, 1, 1)
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * factors[:, 1].view(b, 1, 1, 1) + mean).clamp(0, 1)
    return out


def _jitter_in_random_order(x: torch.Tensor, factors: torch.Tensor, hue: float, uniform,
                            generator: torch.Generator) -> torch.Tensor:
    """torchvision's ``ColorJitter`` per image: brightness, contrast, saturation (``factors``)
    and a hue shift in [−hue, hue], in an order drawn per image (torchvision's functional
    adjustments, each clamped to [0, 1] as ``ColorJitter`` does)."""
    from torchvision.transforms.v2 import functional as tvf

    shifts = hue * (2 * uniform(x.shape[0]) - 1)
    out = []
    for img, f, shift in zip(x, factors.tolist(), shifts.tolist()):
        ops = (lambda t: tvf.adjust_brightness(t, f[0]), lambda t: tvf.adjust_contrast(t, f[1]),
               lambda t: tvf.adjust_saturation(t, f[2]),
               lambda t: tvf.adjust_hue(t, shift) if hue else t)
        for k in torch.randperm(4, generator=generator).tolist():
            img = ops[k](img)
        out.append(img)
    return torch.stack(out)


def _hue(x: torch.Tensor, amount: float, uniform) -> torch.Tensor:
    """A random hue shift in [−amount, amount] per image (torchvision's ``adjust_hue``)."""
    if not amount:
        return x
    from torchvision.transforms.v2.functional import adjust_hue

    shifts = amount * (2 * uniform(x.shape[0]) - 1)
    return torch.stack([adjust_hue(img, float(s)) for img, s in zip(x, shifts)])


def sample_prior(n: int, config: DCCSConfig, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """n draws of the prior: [N(0, style_std²) style, uniform one-hot category]."""
    zs = torch.randn(n, config.style_dim, generator=generator) * config.style_std
    zc = F.one_hot(torch.randint(config.clusters, (n,), generator=generator), config.clusters)
    return torch.cat([zs, zc.float()], dim=1).to(device)


class DCCSTrainer:
    """Alternating critic / encoder updates (``critic_steps`` critic steps, then one encoder
    step), with each loss term exposed so tests can check that a step lowers it."""

    def __init__(self, model: DCCS, device: torch.device | str = "cpu"):
        self.model = model.to(device)
        self.device = device
        cfg = model.config
        self.config = cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        encoder_params = list(model.encoder.parameters()) + list(model.discriminator.parameters())
        self.opt_encoder = torch.optim.Adam(encoder_params, lr=cfg.lr, betas=cfg.betas)
        self.opt_critic = torch.optim.Adam(model.critic.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.steps = 0

    def critic_loss(self, x: torch.Tensor, prior: torch.Tensor, alpha: torch.Tensor
                    ) -> torch.Tensor:
        """WGAN-GP critic loss: E[C(z)] − E[C(prior)] + λ·(‖∇C(mix)‖ − 1)²."""
        critic = self.model.critic
        with torch.no_grad():
            z, _, _ = self.model.latent(x)
        mix = (alpha * prior + (1 - alpha) * z).requires_grad_(True)
        grad, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
        penalty = ((grad.norm(2, dim=1) - 1) ** 2).mean()
        wasserstein = critic(z).mean() - critic(prior).mean()
        return self.config.beta_adv * (wasserstein + self.config.gradient_penalty * penalty)

    def encoder_losses(self, x: torch.Tensor, x_aug: torch.Tensor, permutation: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """The encoder's three terms (already weighted): adversarial, MI and augmentation."""
        cfg = self.config
        b = x.shape[0]
        _, aug_logits, _ = self.model.latent(x_aug)
        z, logits, features = self.model.latent(x)
        adv = -self.model.critic(z).mean()
        pairs = torch.cat([torch.cat([features, z], 1), torch.cat([features, z[permutation]], 1)])
        labels = torch.cat([torch.ones(b, 1), torch.zeros(b, 1)]).to(x.device)
        mi = F.binary_cross_entropy_with_logits(self.model.discriminator(pairs), labels)
        aug = F.kl_div(F.log_softmax(aug_logits, dim=1), torch.softmax(logits, dim=1),
                       reduction="batchmean")
        return {"adversarial": cfg.beta_adv * adv, "mutual_information": cfg.beta_mi * mi,
                "augmentation": cfg.beta_aug * aug}

    def inputs_for(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The random draws of one step: augmented copy, permutation, prior, mixing weights."""
        b = x.shape[0]
        return {"x_aug": augment(x, self.config.augment, self.generator),
                "permutation": torch.randperm(b, generator=self.generator).to(x.device),
                "prior": sample_prior(b, self.config, self.generator, x.device),
                "alpha": torch.rand(b, 1, generator=self.generator).to(x.device)}

    def critic_step(self, x: torch.Tensor, draws: dict[str, torch.Tensor]) -> float:
        loss = self.critic_loss(x, draws["prior"], draws["alpha"])
        self.opt_critic.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_critic.step()
        return float(loss.detach())

    def encoder_step(self, x: torch.Tensor, draws: dict[str, torch.Tensor]) -> dict[str, float]:
        losses = self.encoder_losses(x, draws["x_aug"], draws["permutation"])
        total = sum(losses.values())
        self.opt_encoder.zero_grad(set_to_none=True)
        total.backward()
        self.opt_encoder.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One update of the schedule: the critic, or the encoder every
        ``critic_steps + 1``-th step."""
        self.model.train()
        draws = self.inputs_for(x)
        encoder_turn = self.steps % (self.config.critic_steps + 1) == self.config.critic_steps
        self.steps += 1
        if encoder_turn:
            return self.encoder_step(x, draws)
        return {"critic": self.critic_step(x, draws)}


def fit_dccs(images: torch.Tensor, config: DCCSConfig, device: str = "cpu",
             progress: Callable[[int, dict[str, float]], None] | None = None
             ) -> tuple[DCCS, list[dict[str, float]]]:
    """Train DCCS on ``images`` (N, C, S, S) in [0, 1]; returns the model and the mean losses
    of every epoch. Seeded: the same images and config give the same model on the CPU."""
    torch.manual_seed(config.seed)
    n, c, s = images.shape[0], images.shape[1], images.shape[-1]
    if n < 2:
        raise ValueError(f"DCCS needs at least 2 images, got {n}")
    model = DCCS(c, s, config)
    model.mean.copy_(images.mean(dim=(0, 2, 3)).view(1, c, 1, 1))
    model.std.copy_(images.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, c, 1, 1))
    trainer = DCCSTrainer(model, device)
    batch = min(config.batch_size, n)
    history = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=trainer.generator)
        sums: dict[str, list[float]] = {}
        for start in range(0, n - batch + 1, batch):  # drop the last partial batch (BN)
            losses = trainer.step(images[order[start:start + batch]].to(device))
            for k, v in losses.items():
                sums.setdefault(k, []).append(v)
        record = {k: float(np.mean(v)) for k, v in sums.items()}
        history.append(record)
        if progress:
            progress(epoch, record)
    return model.eval(), history


@torch.no_grad()
def assign(model: DCCS, images: torch.Tensor, batch: int = 256, device: str = "cpu"
           ) -> tuple[np.ndarray, np.ndarray]:
    """The latent z = [z_s, z_c] (N, style_dim + K) and the cluster (N,) of each image."""
    model.eval().to(device)
    latents = [model.latent(images[i:i + batch].to(device))[0].cpu()
               for i in range(0, len(images), batch)]
    z = torch.cat(latents).numpy()
    return z, z[:, model.config.style_dim:].argmax(axis=1)
