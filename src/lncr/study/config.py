"""``study.yaml``: the settings of every stage, validated into typed, frozen objects.

A YAML file holding only ``patients:`` and ``slides:`` is a complete study with every setting at
its default. Unknown keys are errors that name the key, its line and the closest valid key.
Command-line overrides use dotted keys (``tiling.tile_size=256``) and are applied before
validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lncr.errors import BadInput
from lncr.slides.annotations import DEFAULT_EXCLUDE, RegionRules

DEFAULT_STAINS: tuple[str, ...] = ("HE", "PAS", "PASM", "MASSON")


def registered(value: str, names: list[str], what: str) -> str:
    """``value`` when it is one of ``names`` (a registry's), else :class:`BadInput` (a
    ValueError, so pydantic reports it as a setting's error) naming the closest."""
    if value in names:
        return value
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise BadInput(f"unknown {what} {value!r}: {hint}use one of {', '.join(names)}")


def _normalisers() -> list[str]:
    from lncr.registries import list_normalisers

    return list_normalisers()


class StudyConfigError(BadInput):
    """``study.yaml`` (or an override) is not a valid study; ``problems`` lists every one."""

    def __init__(self, path: Path | None, problems: list[str]):
        self.path = path
        self.problems = problems
        where = f"{path}: " if path else ""
        super().__init__(where + f"{len(problems)} problem(s) in the study settings:\n  - "
                         + "\n  - ".join(problems))


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class MagnificationSettings(_Settings):
    """Objective powers are physical resolutions: ``mpp(power) = reference_mpp ×
    reference_power / power`` (40x = 0.25 µm/px, 20x = 0.5, 10x = 1.0 by default)."""

    reference_power: float = Field(40.0, gt=0)
    reference_mpp: float = Field(0.25, gt=0)
    powers: tuple[float, ...] = (10.0, 20.0, 40.0)

    @field_validator("powers")
    @classmethod
    def _positive_unique(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(p <= 0 for p in v) or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct positive objective powers")
        return tuple(sorted(v))

    def mpp(self, power: float) -> float:
        return self.reference_mpp * self.reference_power / power

    @staticmethod
    def label(power: float) -> str:
        return f"{power:g}x"


class SplitSettings(_Settings):
    """Patient-level train/validation split of the development cohort, used when
    ``patients.csv`` has no ``split`` column; stratified by label."""

    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class TilingSettings(_Settings):
    """``lncr tile``: grid, tissue rule, brightness/contrast and colour normalisation."""

    tile_size: int = Field(512, ge=32, le=4096)
    background_threshold: int = Field(225, ge=0, le=255)
    max_background_fraction: float = Field(0.5, ge=0, le=1)
    prefilter: bool = True
    luminosity_standardise: bool = True
    luminosity_percentile: float = Field(95.0, gt=50, le=100)
    normalisation: dict[str, str] = Field(
        # Chosen from the cohort-gap measurement of bench/stain.py (docs/tiling.md).
        default_factory=lambda: {"HE": "vahadane", "PAS": "vahadane", "PASM": "vahadane",
                                 "MASSON": "reinhard"})
    default_normalisation: str = "reinhard"  # a registered normaliser (list_normalisers())
    stain_estimate: Literal["slide", "tile"] = "slide"
    reference_images: dict[str, Path] = Field(default_factory=dict)
    encoding: Literal["jpeg", "png"] = "png"
    jpeg_quality: int = Field(90, ge=50, le=100)
    png_compression: int = Field(1, ge=0, le=9)  # 0 stored, 1-3 ISA-L (fast), 4-9 zlib (smaller)
    workers: int = Field(0, ge=0)

    @field_validator("normalisation")
    @classmethod
    def _registered_methods(cls, v: dict[str, str]) -> dict[str, str]:
        names = _normalisers()
        return {stain: registered(m, names, "normalisation method") for stain, m in v.items()}

    @field_validator("default_normalisation")
    @classmethod
    def _registered_default(cls, v: str) -> str:
        return registered(v, _normalisers(), "normalisation method")

    def method_for(self, stain: str) -> str:
        """The normalisation of ``stain`` (``default_normalisation`` if not listed)."""
        return self.normalisation.get(stain, self.default_normalisation)


class AnnotationSettings(_Settings):
    """QuPath annotations (GeoJSON) as the regions of each slide to tile (docs/annotations.md)."""

    # auto: a slide's annotations when slides.csv names them (column ``annotations``) or a
    # ``<slide name>.geojson`` lies beside it; require: every slide must have them; never: ignore.
    use: Literal["auto", "require", "never"] = "auto"
    # Classes (shell wildcards, case ignored) whose regions are left out: artefacts, pen marks.
    exclude_classes: tuple[str, ...] = DEFAULT_EXCLUDE
    # None: every other annotation is tissue to use; a list: only these classes are.
    include_classes: tuple[str, ...] | None = None
    # QuPath crops MIRAX slides to openslide.bounds-x/y: shift its coordinates (in and out).
    crop_to_bounds: bool = True

    def rules(self) -> RegionRules:
        return RegionRules(self.exclude_classes, self.include_classes, self.crop_to_bounds)


class TrainingSettings(_Settings):
    """``lncr train``: the published attention-MIL model and its optimisation (docs/training.md
    explains every field)."""

    architecture: str = "resnet50"  # a registered backbone, a torchvision name or timm:<name>
    pretrained: bool = True  # ImageNet weights (torchvision/timm, or sweep.weights' file)
    bag_size: int = Field(16, ge=1)  # tiles drawn at random per slide per step
    embedding_dim: int = Field(512, ge=1)  # the projection of each tile's features
    transformer_layers: int = Field(2, ge=0)  # encoder layers over the bag
    transformer_heads: int = Field(8, ge=1)
    feedforward_dim: int = Field(2048, ge=1)  # the transformer's feed-forward width
    dropout: float = Field(0.1, ge=0, lt=1)
    batch_norm: Literal["frozen", "train"] = "frozen"  # backbone BatchNorm statistics
    crop_size: int = Field(384, ge=8)  # random (training) / centre crop, for 512-px tiles
    input_size: int = Field(299, ge=8)  # the crop resized to this, for 512-px tiles
    eval_tiles: int = Field(128, ge=1)  # tiles per slide in validation and prediction bags
    # computed: the training tiles' mean and std; published: the authors'; imagenet
    channel_stats: Literal["computed", "published", "imagenet"] = "computed"
    augment: bool = False  # the authors: random crop only (no flips, rotations or jitter)
    colour_jitter: float = Field(0.05, ge=0, lt=1)  # with augment: brightness/contrast ±
    bags_per_step: int = Field(1, ge=1)  # bags (slides) per optimiser step
    epochs: int = Field(100, ge=1)
    warmup_epochs: int = Field(5, ge=0)  # linear warm-up, then cosine to min_learning_rate
    optimiser: Literal["auto", "sgd", "adam"] = "auto"  # auto: Adam for ViT, SGD otherwise
    learning_rate: float = Field(5e-4, gt=0)
    # Pretrained backbones only: their lr = learning_rate × this (0 freezes them).
    backbone_lr_factor: float = Field(1.0, ge=0)
    min_learning_rate: float = Field(1e-6, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "fp32"  # the authors: fp32 (apex O0)
    loader_workers: int = Field(2, ge=0)  # tile-decoding processes per run
    checkpoint_every: int = Field(50, ge=0)  # steps between mid-epoch checkpoints (0: none)
    seed: int = 0  # weights, bag draws and augmentation
    # Fewest training patients of each outcome (with tiles) a run is trained on; a stain ×
    # magnification with fewer gets no model, and says so (docs/sweep.md).
    min_patients_per_outcome: int = Field(2, ge=1)


class SweepSettings(_Settings):
    """``lncr sweep``: architecture × bag size × repeats per stain and magnification
    (docs/sweep.md explains the design, the selection rule and the executors)."""

    # the published six
    architectures: tuple[str, ...] = ("alexnet", "densenet121", "inception_v3", "resnet50",
                                      "vgg11", "vit_base_patch16_384")
    bag_sizes: tuple[int, ...] = (8, 16, 32, 64)  # the published four
    repeats: int = Field(10, ge=1)  # trainings per configuration (seed = repeat)
    stains: tuple[str, ...] | None = None  # None: every stain of the study
    magnifications: tuple[str, ...] | None = None  # None: every magnification, e.g. [10x]
    epochs: int | None = Field(None, ge=1)  # None: training.epochs
    resplit: bool = False  # repeat r > 0 draws its own stratified patient-level split
    # split: each unit is scored on the validation patients of its split (the published
    # protocol); kfold: each unit is trained once per fold and a configuration is scored by
    # the AUC of its pooled out-of-fold predictions (docs/sweep.md, for small cohorts).
    validation: Literal["split", "kfold"] = "split"
    folds: int = Field(5, ge=2)  # kfold: patient-level folds, stratified by outcome
    fold_by_site: bool = False  # kfold: each development site's patients in one fold
    # kfold: refit = one final model per stain × magnification trained on every development
    # patient; folds = the mean of the selected configuration's fold models instead.
    final_ensemble: Literal["refit", "folds"] = "refit"
    early_stopping: Literal["none", "halving"] = "none"  # halving: successive halving
    halving_rate: int = Field(3, ge=2)  # keep 1 in this many configurations per rung
    min_epochs: int = Field(10, ge=1)  # the first rung
    executor: str = "local"  # a registered executor (lncr.sweep.executors.EXECUTORS)
    workers: int = Field(0, ge=0)  # 0: one per GPU, or one per `unit_cpus` CPU cores
    unit_cpus: int = Field(1, ge=1)  # CPU threads (and Ray CPUs) of one unit
    unit_gpus: float = Field(1.0, ge=0)  # Ray GPUs of one unit when the cluster has GPUs
    retries: int = Field(2, ge=0)  # Ray: runs of a unit whose worker died (pre-empted), again
    weights: dict[str, Path] = Field(default_factory=dict)  # architecture -> local weights file
    # "frozen": the grid trains on cached features of frozen pretrained backbones, then only
    # the selected configurations are trained with the training settings (docs/embeddings.md).
    backbone: Literal["finetune", "frozen"] = "finetune"
    # With backbone: frozen, the units of one stain × magnification × architecture × bag size
    # train together as one stacked model (lncr.training.group), each with exactly its lone
    # results: 0 = as many per group as keep every worker busy and fit the device's memory;
    # 1 = one unit at a time; n = at most n per group.
    group_size: int = Field(0, ge=0)

    @field_validator("executor")
    @classmethod
    def _registered_executor(cls, v: str) -> str:
        from lncr.registries import list_executors

        return registered(v, list_executors(), "executor")

    @model_validator(mode="after")
    def _one_protocol(self) -> "SweepSettings":
        if self.validation == "kfold" and self.resplit:
            raise ValueError("sweep.resplit re-draws the validation split of each repeat; with "
                             "sweep.validation=kfold each repeat draws its own folds already: "
                             "drop sweep.resplit")
        if self.final_ensemble == "folds" and self.validation != "kfold":
            raise ValueError("sweep.final_ensemble=folds averages the fold models of k-fold "
                             "selection: set sweep.validation=kfold, or final_ensemble=refit")
        return self

    @field_validator("bag_sizes")
    @classmethod
    def _bags(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(b < 1 for b in v) or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct positive bag sizes")
        return v

    @field_validator("architectures")
    @classmethod
    def _architectures(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct architecture names")
        return v


class EmbeddingSettings(_Settings):
    """Tile features of frozen backbones, computed once (``lncr embed``, docs/embeddings.md)."""

    use: Literal["auto", "never"] = "auto"  # auto: whenever a pretrained backbone is frozen
    views: int = Field(1, ge=1, le=64)  # 1: the centred crop; V: and V-1 augmented views
    seed: int = 0  # the draws of the augmented views
    batch_size: int = Field(64, ge=1)  # tiles per encoder batch
    workers: int = Field(2, ge=0)  # tile-decoding processes
    dtype: Literal["float32", "float16"] = "float32"  # how features are stored


class EnsembleSettings(_Settings):
    """Per stain, combine magnifications; across stains, combine stains."""

    within_stain: Literal["mean", "max"] = "mean"
    across_stains: Literal["mean", "max"] = "max"


class EvaluationSettings(_Settings):
    """``lncr predict``/``lncr evaluate`` on the final models: threshold fixed on the development
    validation patients, CIs by DeLong and bootstrap."""

    # youden: fixed on the development validation patients; cohort_youden: each cohort's own
    # Youden threshold, as the authors' ModelTest.py (optimistic: the test labels set it).
    threshold: Literal["youden", "0.5", "cohort_youden"] = "youden"
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(2000, ge=100)
    calibration_bins: int = Field(5, ge=2)
    checkpoint: Literal["last", "best"] = "last"
    tiles: Literal["eval", "all"] = "eval"
    seed: int = 0


class ExplainSettings(_Settings):
    """``lncr explain``: Grad-CAM, attention heatmaps, DCCS clustering."""

    top_k: int = Field(8, ge=1)
    # Which tiles are "influential" (docs/explain.md): attention, effect (signed leave-one-out
    # effect toward the explained outcome) or attention_effect (their product).
    influence: Literal["attention", "effect", "attention_effect"] = "effect"
    cam_method: str = "gradcam"  # a registered CAM method (lncr.explain.gradcam.CAM_METHODS)
    # Dotted module path in the backbone; None: the last spatial map (found by a dry run);
    # "last_conv": the last Conv2d, as the authors' gradCAM.py.
    cam_layer: str | None = None
    # The outcome explained (influential tiles and Grad-CAM): the slide's predicted outcome at
    # the validation-fixed threshold, or always CR / non-CR (the authors: P(CR)).
    target: Literal["predicted", "cr", "noncr"] = "predicted"
    cam_relu: bool = True  # False: the authors' raw map (no ReLU) rescaled to [0, 1]
    cam_overlay_alpha: float = Field(0.6, ge=0, le=1)  # map weight in the overlay (authors 0.6)
    # Whose slides `lncr explain gradcam` explains without --patient: "chosen" (the most
    # confident correct and incorrect prediction per cohort), or a whole side or cohort —
    # train (the authors': the training group), val, development, external or all.
    cam_patients: Literal["chosen", "train", "val", "development", "external", "all"] = "chosen"
    clusters: int = Field(6, ge=2)
    style_dim: int = Field(50, ge=1)
    # resnet: Encoder96's shape with global pooling (any tile size); published: the authors'
    # Encoder96 (bias-free convolutions, AvgPool2d(6) → 2 × 2 convolution; 224-px tiles)
    cluster_encoder: Literal["resnet", "published", "plain"] = "resnet"
    cluster_augment: Literal["published", "light"] = "published"
    # DCCS input: the centred ``cluster_crop`` (px of a 512-px tile, scaled with the tile size)
    # resized to ``cluster_tile_size`` — the authors' CenterCrop(384) → Resize(224).
    cluster_crop: int = Field(384, ge=8)
    cluster_tile_size: int = Field(224, ge=16)
    cluster_epochs: int = Field(3000, ge=1)
    cluster_lr: float = Field(1e-4, gt=0)  # the paper's; small tile sets need more (1e-3)
    cluster_batch_size: int = Field(64, ge=4)  # the argparse default; their launch script 128
    tsne_iterations: int = Field(1000, ge=250)  # the authors' figure script: 20000
    seed: int = 0

    @field_validator("cam_method")
    @classmethod
    def _registered_cam(cls, v: str) -> str:
        from lncr.registries import list_cam_methods

        return registered(v, list_cam_methods(), "CAM method")


class StudyConfig(_Settings):
    """The whole study: where its tables are, and the settings of every stage."""

    name: str = "study"
    # "published": every setting the authors' code fixes takes their value unless the study
    # sets it explicitly (lncr.study.recipes.PUBLISHED, docs/fidelity.md).
    recipe: Literal["lncr", "published"] = "lncr"
    patients: Path
    slides: Path
    output_dir: Path = Path("lncr-output")
    stains: tuple[str, ...] = DEFAULT_STAINS
    magnification: MagnificationSettings = MagnificationSettings()
    split: SplitSettings = SplitSettings()
    tiling: TilingSettings = TilingSettings()
    annotations: AnnotationSettings = AnnotationSettings()
    training: TrainingSettings = TrainingSettings()
    sweep: SweepSettings = SweepSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    ensemble: EnsembleSettings = EnsembleSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    explain: ExplainSettings = ExplainSettings()

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any) -> Any:
        from lncr.study.recipes import apply_recipe

        return apply_recipe(data)

    @field_validator("stains")
    @classmethod
    def _stain_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from lncr.identifiers import nfc

        names = [nfc(s.strip()) for s in v]  # as the tables are read
        if not names or any(not s for s in names) or len(set(names)) != len(names):
            raise ValueError("must be a non-empty list of distinct stain names")
        from lncr.identifiers import ALLOWED, identifier_problem

        for name in names:
            problem = identifier_problem(name)
            if problem:
                raise ValueError(f"stain {name!r} {problem}; stain names may hold {ALLOWED}")
        folded = [s.casefold() for s in names]
        if len(set(folded)) != len(folded):
            raise ValueError("two stain names differ only in case; file systems that ignore "
                             "case would mix their files")
        return tuple(names)

    @model_validator(mode="after")
    def _normalisers_for_known_stains(self) -> "StudyConfig":
        unknown = sorted(set(self.tiling.normalisation) - set(self.stains))
        if unknown and self.tiling.normalisation != TilingSettings().normalisation:
            raise ValueError(f"tiling.normalisation names stain(s) {unknown} that are not in "
                             f"stains {list(self.stains)}")
        return self

    @model_validator(mode="after")
    def _sweep_subset(self) -> "StudyConfig":
        mags = [self.magnification.label(p) for p in self.magnification.powers]
        for name, chosen, valid in (("stains", self.sweep.stains, self.stains),
                                    ("magnifications", self.sweep.magnifications, mags)):
            unknown = [c for c in chosen or () if c not in valid]
            if unknown:
                raise ValueError(f"sweep.{name} names {unknown}, not among the study's "
                                 f"{list(valid)}")
        return self

    def backbone_weights(self, architecture: str) -> str | None:
        """The pretrained weights of ``architecture``: its file in ``sweep.weights``, else the
        library's ImageNet weights when ``training.pretrained``, else None (random)."""
        if architecture in self.sweep.weights:
            return str(self.sweep.weights[architecture])
        return "imagenet" if self.training.pretrained else None

    def magnification_labels(self) -> tuple[str, ...]:
        """``('10x', '20x', '40x')`` for the study's powers."""
        return tuple(self.magnification.label(p) for p in self.magnification.powers)


def config_to_dict(config: StudyConfig) -> dict:
    """Plain, YAML-safe mapping of the effective settings."""
    return config.model_dump(mode="json")


def sweep_stains(config: StudyConfig) -> tuple[str, ...]:
    """The stains the sweep compares (``sweep.stains``, else every stain)."""
    return tuple(config.sweep.stains or config.stains)


def sweep_magnifications(config: StudyConfig) -> tuple[str, ...]:
    """The magnifications the sweep compares (``sweep.magnifications``, else every one)."""
    return tuple(config.sweep.magnifications or config.magnification_labels())
