"""The output tree of a study in one place: every file lncr writes under ``output_dir``, and
the reader beside the writer for each table one stage writes and another reads.

``docs/pipeline.md`` describes what each file holds. Paths stored inside these tables are
relative to ``output_dir`` (:mod:`lncr.paths`), and the readers resolve them against the
folder they read from, so a study folder copied elsewhere works in place. Identifier columns
(``patient_id``) are read as text, never as numbers or missing values: ``001`` stays ``001``
and a patient called ``NA`` stays ``NA``.

>>> layout = Layout(Path("/data/study/lncr-output"))
>>> layout.tiles_index.relative_to(layout.root).as_posix()
'tiles/index.csv'
>>> layout.final_models.relative_to(layout.root).as_posix()
'final/models.csv'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lncr.errors import BadInput
from lncr.fileio import atomic_write_text
from lncr.identifiers import file_name
from lncr.paths import resolve_columns, store_columns

#: Columns holding identifiers: read as text, an empty cell stays "".
ID_COLUMNS = ("patient_id", "stain", "magnification", "split", "cohort", "model", "site")
#: Path columns of ``tiles/index.csv`` (stored relative to the output folder; text, so that a
#: file called ``NA`` is not read as missing).
INDEX_PATHS = ["slide", "store", "annotations"]
_TEXT_COLUMNS = (*ID_COLUMNS, *INDEX_PATHS, "folder")
#: Cells read as missing in every other column (pandas' defaults).
_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
       "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


class MissingOutput(BadInput):
    """A stage needs a file that an earlier stage writes, and it is not there."""


def read_table(path: Path) -> pd.DataFrame:
    """A CSV written by lncr, with identifier and path columns as text (an empty cell is
    "", see :data:`ID_COLUMNS`)."""
    header = pd.read_csv(path, nrows=0).columns
    ids = [c for c in header if c in _TEXT_COLUMNS]
    return pd.read_csv(path, dtype={c: str for c in ids}, keep_default_na=False,
                       na_values={c: _NA for c in header if c not in ids})


def write_table(path: Path, table: pd.DataFrame) -> Path:
    """Write ``table`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, table.to_csv(index=False))
    return path


@dataclass(frozen=True)
class Layout:
    """Every file of one study's output folder (``root`` = ``output_dir``)."""

    root: Path

    # study/ — lncr validate
    @property
    def study_dir(self) -> Path:
        return self.root / "study"

    @property
    def split(self) -> Path:
        return self.study_dir / "split.csv"

    @property
    def split_record(self) -> Path:
        return self.study_dir / "split.json"

    @property
    def study_summary(self) -> Path:
        return self.study_dir / "summary.json"

    # tiles/ — lncr tile
    @property
    def tiles_dir(self) -> Path:
        return self.root / "tiles"

    @property
    def tiles_index(self) -> Path:
        return self.tiles_dir / "index.csv"

    @property
    def tiles_summary(self) -> Path:
        return self.tiles_dir / "summary.csv"

    @property
    def tiles_record(self) -> Path:
        return self.tiles_dir / "run.json"

    @property
    def tiles_qc(self) -> Path:
        return self.tiles_dir / "qc"

    @property
    def tiles_norm(self) -> Path:
        return self.tiles_dir / "norm"

    # sweep/ and final/ — lncr sweep
    @property
    def sweep_dir(self) -> Path:
        return self.root / "sweep"

    @property
    def sweep_record(self) -> Path:
        return self.sweep_dir / "sweep.json"

    @property
    def sweep_units(self) -> Path:
        return self.sweep_dir / "units.csv"

    @property
    def sweep_summary(self) -> Path:
        return self.sweep_dir / "summary.csv"

    @property
    def sweep_criterion(self) -> Path:
        """The scores the selection compares (:mod:`lncr.sweep.criterion`)."""
        return self.sweep_dir / "criterion.csv"

    @property
    def sweep_oof_predictions(self) -> Path:
        """k-fold: the pooled out-of-fold predictions behind ``criterion.csv``."""
        return self.sweep_dir / "oof_predictions.csv"

    @property
    def selection(self) -> Path:
        return self.sweep_dir / "selection.json"

    @property
    def final_dir(self) -> Path:
        return self.root / "final"

    @property
    def final_models(self) -> Path:
        return self.final_dir / "models.csv"

    @property
    def final_units(self) -> Path:
        return self.final_dir / "units.csv"

    @property
    def final_record(self) -> Path:
        return self.final_dir / "final.json"

    @property
    def final_runs(self) -> Path:
        return self.final_dir / "runs"

    @property
    def final_folds(self) -> Path:
        """``sweep.validation: kfold``: the final configurations' fold models."""
        return self.final_dir / "folds.csv"

    # predictions/, evaluation/, explain/, report/
    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, kind: str) -> Path:
        """``single_models``, ``stain_ensembles`` or ``multi_stain``."""
        return self.predictions_dir / f"{kind}.csv"

    @property
    def predictions_record(self) -> Path:
        return self.predictions_dir / "predictions.json"

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    @property
    def metrics(self) -> Path:
        return self.evaluation_dir / "metrics.csv"

    def evaluation_table(self, name: str) -> Path:
        """``metrics``, ``threshold_metrics``, ``calibration`` or ``comparisons``."""
        return self.evaluation_dir / f"{name}.csv"

    def site_table(self, name: str) -> Path:
        """``evaluation/sites/<name>.csv``: the external cohort per site (``metrics``,
        ``threshold_metrics``, ``comparisons``)."""
        return self.evaluation_dir / "sites" / f"{name}.csv"

    @property
    def baseline_metrics(self) -> Path:
        return self.evaluation_dir / "baseline" / "metrics.csv"

    @property
    def evaluation_record(self) -> Path:
        return self.evaluation_dir / "evaluation.json"

    @property
    def explain_dir(self) -> Path:
        return self.root / "explain"

    @property
    def influential(self) -> Path:
        return self.explain_dir / "influential.csv"

    @property
    def explain_record(self) -> Path:
        return self.explain_dir / "explain.json"

    @property
    def gradcam_dir(self) -> Path:
        return self.explain_dir / "gradcam"

    @property
    def gradcam_table(self) -> Path:
        return self.gradcam_dir / "gradcam.csv"

    @property
    def gradcam_record(self) -> Path:
        return self.gradcam_dir / "gradcam.json"

    @property
    def clusters_dir(self) -> Path:
        return self.explain_dir / "clusters"

    @property
    def pointing(self) -> Path:
        return self.explain_dir / "pointing" / "pointing.csv"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def report(self) -> Path:
        return self.root / "report" / "report.html"

    # files named after identifiers from the user's tables: always through file_name
    def tile_store(self, stain: str, magnification: str, patient_id: str) -> Path:
        return (self.tiles_dir / file_name(stain) / magnification
                / f"{file_name(patient_id)}.tiles.zip")

    def qc_image(self, patient_id: str, stain: str) -> Path:
        return self.tiles_qc / f"{file_name(patient_id)}_{file_name(stain)}.png"

    def norm_reference(self, stain: str) -> Path:
        return self.tiles_norm / f"{file_name(stain)}.json"

    def norm_image(self, stain: str) -> Path:
        return self.tiles_norm / f"{file_name(stain)}-reference.png"

    def explain_file(self, kind: str, stain: str, magnification: str, patient_id: str,
                     suffix: str) -> Path:
        """``explain/<kind>/<stain>/<mag>/<patient><suffix>`` (kind: scores, heatmaps,
        geojson; suffix "" for gradcam's per-patient folder)."""
        return (self.explain_dir / kind / file_name(stain) / magnification
                / f"{file_name(patient_id)}{suffix}")

    def features_file(self, feature_id: str, stain: str, magnification: str,
                      patient_id: str) -> Path:
        """``features/<encoder id>/<stain>/<mag>/<patient>.h5`` (:mod:`lncr.features`)."""
        return (self.features_dir / file_name(feature_id) / file_name(stain) / magnification
                / f"{file_name(patient_id)}.h5")

    def clusters(self, stain: str, magnification: str) -> Path:
        return self.clusters_dir / file_name(stain) / magnification

    # readers and writers of the tables that cross stages
    def read_split(self) -> pd.DataFrame:
        """``study/split.csv`` (``patient_id, label, split``), written by ``lncr validate``
        (:func:`lncr.study.split.write_split`)."""
        return read_table(self._needed(self.split, "lncr validate"))

    def write_tiles_index(self, table: pd.DataFrame) -> Path:
        """``tiles/index.csv``: one row per slide × magnification, paths stored relative."""
        return write_table(self.tiles_index, store_columns(table, INDEX_PATHS, self.root))

    def read_tiles_index(self) -> pd.DataFrame:
        """``tiles/index.csv`` with its ``slide``, ``store`` and ``annotations`` paths
        resolved."""
        index = read_table(self._needed(self.tiles_index, "lncr tile"))
        return resolve_columns(index, [c for c in INDEX_PATHS if c in index], self.root)

    def write_final_models(self, table: pd.DataFrame) -> Path:
        """``final/models.csv``: one row per stain × magnification, run folder relative."""
        return write_table(self.final_models, store_columns(table, ["folder"], self.root))

    def read_final_models(self) -> pd.DataFrame:
        """``final/models.csv`` with run folders resolved."""
        table = read_table(self._needed(self.final_models, "lncr sweep"))
        return resolve_columns(table, ["folder"], self.root)

    def read_single_final_models(self, purpose: str) -> pd.DataFrame:
        """The finished final models, each one run folder; :class:`MissingOutput` naming
        ``purpose`` when they are fold ensembles (``sweep.final_ensemble: folds``)."""
        table = self.read_final_models()
        table = table[table.status == "done"]
        if (table.folder == "").any():
            raise MissingOutput(
                f"{self.final_models} holds fold ensembles (sweep.final_ensemble=folds): "
                f"{purpose} needs one model per stain × magnification. Set "
                "sweep.final_ensemble=refit and run `lncr sweep` again (the fold models are "
                "kept), then this command")
        return table

    def write_final_folds(self, table: pd.DataFrame) -> Path:
        """``final/folds.csv``: one row per stain × magnification × fold, run folder
        relative."""
        return write_table(self.final_folds, store_columns(table, ["folder"], self.root))

    def read_final_folds(self) -> pd.DataFrame | None:
        """``final/folds.csv`` with run folders resolved, or None (not a k-fold study)."""
        if not self.final_folds.exists():
            return None
        return resolve_columns(read_table(self.final_folds), ["folder"], self.root)

    def read_metrics(self) -> pd.DataFrame | None:
        """``evaluation/metrics.csv`` (``lncr evaluate``), or None before evaluation."""
        return read_table(self.metrics) if self.metrics.exists() else None

    def _needed(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise MissingOutput(f"{path} does not exist: run `{stage} STUDY.yaml` first")
        return path
