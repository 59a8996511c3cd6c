"""The slides a run trains and predicts on: one stain × magnification of a study, with their
development side (``train``/``val``) from the recorded split and their tile stores."""

from __future__ import annotations

from lncr.layout import Layout
from lncr.study.validate import Study
from lncr.training.bags import SlideEntry, slide_entries


def study_entries(study: Study, stain: str, magnification: str) -> list[SlideEntry]:
    """The slides of ``stain`` × ``magnification`` with tiles, from the split that ``lncr
    validate`` recorded and the tile index that ``lncr tile`` wrote."""
    layout = Layout(study.config.output_dir)
    return slide_entries(layout, study.patients, layout.read_split(), stain, magnification)
