"""The whole method on the built-in phantom, stage by stage: what ``lncr demo`` runs. In a
notebook::

    from lncr.pipeline import DemoPipeline
    demo = DemoPipeline(Path("demo-output"), workers=2)
    demo.synth(); demo.validate(); demo.tile(); demo.sweep()
    demo.predict().multi.head()

Stages (:data:`STAGES`): synth → validate → tile → embed → sweep + final models → predict →
evaluate → explain (heatmaps, Grad-CAM, DCCS clusters) → report → export + apply (the final
ensemble as a bundle, applied to one external patient's slides as a new patient). Each is a method returning what its
stage's Python API returns, and each resumes: finished slides, tiles, units, predictions and
explanations are read from disk. :meth:`DemoPipeline.run` runs them all inside a stage
display (:class:`StageLog` for the console, or any context-manager factory).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Settings the demo overrides for a quick CPU run: small JPEG tiles; the frozen-feature
#: protocol (``sweep.backbone: frozen``) with EfficientNet-Lite0 and its packaged ImageNet
#: weights, embedded once (two views: the centred crop and one augmented) and a grid shaped
#: like the published one — the published bag sizes 8/16/32/64 (a slide with fewer tiles than
#: the bag repeats its tiles, as small biopsies do at 10x) × five repeats, each on its own
#: patient split, at 10x; final models at 10x and 20x (128-px tiles at 40x hold 32 µm: too little context, and
#: most of the tiling time), and predictions over every tile. ``training.input_size`` is
#: given for 512-px tiles and scaled with the tile size (384 → 96 px on 128-px tiles).
#: docs/fidelity.md lists why each differs from the published method.
DEMO_TILING = ["tiling.encoding=jpeg", "tiling.tile_size=128", "magnification.powers=[10, 20]",
               "split.val_fraction=0.25"]
DEMO_TRAINING = ["training.pretrained=false", "training.backbone_lr_factor=0",
                 "training.augment=true",
                 "training.channel_stats=imagenet", "training.epochs=30",
                 "training.warmup_epochs=1", "training.optimiser=adam",
                 "training.learning_rate=0.001", "training.input_size=384",
                 "training.embedding_dim=32", "training.transformer_heads=4",
                 "training.feedforward_dim=64", "training.eval_tiles=32",
                 "training.loader_workers=0"]
DEMO_SWEEP = ["sweep.backbone=frozen", "sweep.architectures=[timm:tf_efficientnet_lite0]",
              "sweep.bag_sizes=[8, 16, 32, 64]", "sweep.repeats=5", "sweep.resplit=true",
              "sweep.magnifications=[10x]", "embedding.views=2", "embedding.workers=0",
              "embedding.batch_size=128", "evaluation.tiles=all"]
# DCCS on the CPU: small tiles and a short schedule (the defaults are for a GPU).
DEMO_EXPLAIN = ["explain.cluster_tile_size=48", "explain.cluster_epochs=120",
                "explain.cluster_lr=0.001", "explain.cluster_encoder=plain",
                "explain.cluster_augment=light", "explain.cluster_crop=512"]
DEMO_CLUSTER = ("HE", "20x")  # the one final model the demo clusters

STAGES = ["synth", "validate", "tile", "embed", "sweep + final models", "predict (ensembles)",
          "evaluate", "explain (heatmaps)", "explain (Grad-CAM)", "explain (DCCS clusters)",
          "report", "export + apply"]
#: The key of each stage in :attr:`DemoPipeline.progress`, and what its callback receives.
PROGRESS = dict(zip(STAGES, [
    "synth",  # (patient id) per rendered patient
    "validate",  # (unused)
    "tile",  # (UnitResult, done, total) per slide × magnification; "tile-qc": (what, done,
    # total) per QC thumbnail
    "embed",  # (what, done, total) per batch of tiles
    "sweep",  # (unit row) per finished sweep unit
    "predict",  # (what, done, total) per final model
    "evaluate",  # (step) as each step begins
    "heatmaps", "gradcam",  # (what) per explained slide
    "clusters",  # (what, epoch, epochs) per DCCS epoch
    "report",  # (section) per written section
    "apply",  # a lncr.bundle.apply.Steps
]))


class DemoFailed(RuntimeError):
    """A stage failed on the built-in phantom, where it never should: a bug."""


@dataclass
class DemoPipeline:
    """The demo's stages and settings on a phantom written to ``out / "study"``."""

    out: Path
    workers: int = 1
    patients: int = 32
    external: int = 16
    size: str = "small"
    signal: float = 1.9
    epochs: int = 30
    extra: list[str] = field(default_factory=list)  # the user's --set, applied last
    # Each stage's progress callback, by stage name (see :data:`PROGRESS`); a display sets
    # them, the stage passes its own to the function it calls.
    progress: dict[str, Callable[..., None]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # each stage's return value

    @property
    def study_yaml(self) -> Path:
        return self.out / "study" / "study.yaml"

    def tiling_overrides(self) -> list[str]:
        return DEMO_TILING + self.extra

    def overrides(self) -> list[str]:
        """Every override of the model stages (the tiling ones included)."""
        from lncr.models.weights import ARCHITECTURE, lite0_weights

        # Absolute: study.yaml resolves relative paths against its own folder.
        weights = lite0_weights((self.study_yaml.parent / "weights"
                                 / "tf_efficientnet_lite0.pth").resolve())
        return (DEMO_TILING + DEMO_TRAINING + DEMO_SWEEP + DEMO_EXPLAIN
                + [f"training.epochs={self.epochs}",
                   f"sweep.weights={{'{ARCHITECTURE}': '{weights}'}}"] + self.extra)

    def study(self):
        """The phantom study with every demo setting, loaded and checked."""
        from lncr.study.validate import Study

        if "study" not in self.results:
            self.results["study"] = Study.load(self.study_yaml, self.overrides())
        return self.results["study"]

    def synth(self):
        from lncr.synth.cohort import SynthSettings, synthesize

        settings = SynthSettings(patients=self.patients, external=self.external, seed=0,
                                 size=self.size, signal=self.signal)
        return self._keep("synth", synthesize(self.out / "study", settings,
                                              workers=self.workers, force=False,
                                              progress=self.progress.get("synth")))

    def validate(self):
        """Check every slide file and record the split; raises :class:`DemoFailed`."""
        from lncr.study.validate import load_study, save_study_record

        study = load_study(self.study_yaml, self.tiling_overrides(), workers=self.workers)
        if not study.ok:
            raise DemoFailed("the phantom study failed validation: "
                             + "; ".join(str(e) for e in study.problems.errors[:3]))
        save_study_record(study)
        return self._keep("validate", study)

    def tile(self):
        from lncr.study.validate import Study
        from lncr.tiling.run import tile_study

        # Small JPEG tiles keep the CPU demo quick; PNG (lossless) is the default for studies.
        report = tile_study(Study.load(self.study_yaml, self.tiling_overrides()),
                            workers=self.workers, progress=self.progress.get("tile"),
                            qc_progress=self.progress.get("tile-qc"))
        if report.failed:
            raise DemoFailed(f"{len(report.failed)} tiling unit(s) failed on the phantom")
        return self._keep("tile", report)

    def embed(self):
        from lncr.features.study_run import embed_study

        return self._keep("embed", embed_study(self.study(), device="auto",
                                               progress=self.progress.get("embed")))

    def sweep(self):
        from lncr.sweep.run import run_sweep

        return self._keep("sweep", run_sweep(self.study(), executor="local",
                                             workers=self.workers, device="auto",
                                             progress=self.progress.get("sweep")))

    def predict(self):
        from lncr.evaluation.final_predictions import predict_final

        return self._keep("predict", predict_final(self.study(), device="auto",
                                                   progress=self.progress.get("predict")))

    def evaluate(self):
        from lncr.evaluation.evaluate import evaluate_study

        # With the control beside it: colour statistics of the same tiles.
        return self._keep("evaluate", evaluate_study(self.study(), baseline=True,
                                                     progress=self.progress.get("evaluate")))

    def heatmap_patients(self) -> list[str]:
        """The external patients the multi-stain ensemble is surest about, either way."""
        multi = self.results["predict"].multi
        ext = multi[multi.cohort == "external"].dropna(subset=["probability"])
        ext = ext.sort_values("probability")
        return sorted({ext.patient_id.iloc[0], ext.patient_id.iloc[-1]})

    def explain_heatmaps(self):
        from lncr.explain.heatmap_run import explain_heatmaps

        return self._keep("heatmaps", explain_heatmaps(
            self.study(), "external", self.heatmap_patients(), device="auto",
            progress=self.progress.get("heatmaps")))

    def explain_gradcam(self):
        from lncr.explain.gradcam_run import explain_gradcam

        return self._keep("gradcam", explain_gradcam(self.study(), device="auto",
                                                     progress=self.progress.get("gradcam")))

    def explain_clusters(self):
        from lncr.explain.cluster_run import explain_clusters

        return self._keep("clusters", explain_clusters(
            self.study(), [DEMO_CLUSTER[0]], [DEMO_CLUSTER[1]], device="auto",
            progress=self.progress.get("clusters"))[0])

    def report(self) -> Path:
        from lncr.report.build import build_report

        return self._keep("report", build_report(self.study(),
                                                 progress=self.progress.get("report")))

    @property
    def bundle_path(self) -> Path:
        return self.out / "bundle.lncr"

    def apply_patient(self) -> str:
        """The external patient the demo scores as if new: the first of the heatmap pair."""
        return self.heatmap_patients()[0]

    def export_apply(self):
        """Export the final ensemble, then score one external patient's slides with the
        bundle alone, in ``out/new-patient`` (as a hospital receiving the bundle would)."""
        import pandas as pd

        from lncr.bundle.apply import apply_bundle
        from lncr.bundle.export import export_bundle

        bundle = export_bundle(self.study(), self.bundle_path)
        pid = self.apply_patient()
        slides = self.study().slides
        mine = slides[slides.patient_id == pid][["patient_id", "stain", "path"]]
        return self._keep("apply", apply_bundle(bundle, pd.DataFrame(mine),
                                                self.out / "new-patient", device="auto",
                                                workers=self.workers,
                                                steps=self.progress.get("apply")))

    def stages(self) -> list[tuple[str, Callable[[], Any]]]:
        methods = [self.synth, self.validate, self.tile, self.embed, self.sweep, self.predict,
                   self.evaluate, self.explain_heatmaps, self.explain_gradcam,
                   self.explain_clusters, self.report, self.export_apply]
        return list(zip(STAGES, methods))

    def run(self, stage: Callable[[str], AbstractContextManager] | None = None,
            after: dict[str, Callable[[Any], None]] | None = None) -> dict[str, Any]:
        """Every stage in order, each inside ``stage(name)`` (a display), then
        ``after[name](result)`` if given. Returns :attr:`results`."""
        for name, method in self.stages():
            with stage(name) if stage else nullcontext():
                result = method()
                if after and name in after:
                    after[name](result)
        return self.results

    def _keep(self, name: str, value: Any) -> Any:
        self.results[name] = value
        return value


class StageLog:
    """One console display for the whole pipeline: ``[k/N] stage …`` when a stage starts, its
    time when it ends, and the table of all times (:meth:`summary`)."""

    def __init__(self, console, names: list[str] = STAGES):
        self.console = console
        self.names = names
        self.timings: list[tuple[str, float]] = []
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        k = self.names.index(name) + 1
        self.console.rule(f"[bold][{k}/{len(self.names)}] {name}", align="left")
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.timings.append((name, seconds))
        self.console.print(f"[green]✓[/green] {name}: {seconds:.1f} s "
                           f"(total {time.perf_counter() - self.started:.0f} s)")

    def rows(self) -> list[tuple[str, str]]:
        rows = [(name, f"{sec:.1f}") for name, sec in self.timings]
        rows.append(("total", f"{sum(s for _, s in self.timings):.1f}"))
        return rows
