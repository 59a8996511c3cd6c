"""Building blocks of the self-contained report: inlined images, tables, notes.

Images are embedded as ``data:`` URIs (downscaled to ``max_side`` and re-encoded, so the file
stays light), tables are plain HTML with the ``sortable`` class the page's script understands,
and every text goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.fileio import DamagedFile

#: The command that rebuilds the outputs under each folder of ``output_dir``.
REBUILD = (("explain/gradcam", "lncr explain gradcam STUDY.yaml"),
           ("explain/clusters", "lncr explain cluster STUDY.yaml"),
           ("explain/pointing", "python bench/explain_checks.py phantom"),
           ("explain", "lncr explain heatmap STUDY.yaml"),
           ("evaluation", "lncr evaluate STUDY.yaml"), ("predictions", "lncr predict STUDY.yaml"),
           ("sweep", "lncr sweep STUDY.yaml"), ("final", "lncr sweep STUDY.yaml"),
           ("tiles", "lncr tile STUDY.yaml --force"), ("study", "lncr validate STUDY.yaml"))


def damaged(path: Path, reason: str) -> DamagedFile:
    """The error for an output the report cannot read: the file, why, and the command that
    writes it again (after deleting it)."""
    parts = Path(path).as_posix()
    command = next((c for folder, c in REBUILD if f"/{folder}/" in parts), None)
    fix = (f"delete it and run `{command}` to write it again" if command else
           "delete it and run the stage that writes it again")
    return DamagedFile(f"{path} cannot be read ({reason[:160]}): {fix}")


def read_json(path: Path, needed: tuple[str, ...] = ()) -> dict | None:
    """The JSON record at ``path``, or None when the stage that writes it has not run; a
    damaged one (not JSON, not a record, without the ``needed`` keys) raises
    :class:`DamagedFile` with the command that rebuilds it."""
    import json

    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(path, f"not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise damaged(path, f"a JSON {type(record).__name__}, not a record")
    missing = [k for k in needed if k not in record]
    if missing:
        raise damaged(path, f"no {', '.join(missing)}")
    return record


def read_output_table(path: Path, needed: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """An output table, or None when its stage has not run; a damaged one (not CSV, empty,
    without the ``needed`` columns) raises :class:`DamagedFile`."""
    from lncr.layout import read_table

    if not path.exists():
        return None
    try:
        frame = read_table(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise damaged(path, str(exc).splitlines()[0] if str(exc) else "not a table") from exc
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise damaged(path, f"no column {', '.join(missing)}")
    return frame


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def image_uri(path: str | Path, max_side: int = 1000, jpeg: bool = False) -> str:
    """A ``data:`` URI of the image at ``path``, at most ``max_side`` pixels on its long side."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _encoded(im, max_side, jpeg)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow: truncated or not an image
        raise damaged(Path(path), str(exc)) from exc


def _encoded(im, max_side: int, jpeg: bool) -> str:
    """An open image as a ``data:`` URI (RGB, at most ``max_side`` on its long side)."""
    from PIL import Image

    im = im.convert("RGB")
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if jpeg:
        im.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        im.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def array_uri(image: np.ndarray) -> str:
    """An RGB uint8 array as a PNG ``data:`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def figure_uri(fig) -> str:
    """A matplotlib figure as a PNG ``data:`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def img(uri: str, caption: str, width: str = "100%") -> str:
    """An inlined image that zooms when clicked, with its caption."""
    return (f'<figure><img class="zoom" src="{uri}" alt="{esc(caption)}" '
            f'style="max-width:{width}"><figcaption>{esc(caption)}</figcaption></figure>')


def image_file(path: str | Path, caption: str, max_side: int = 1000, width: str = "100%",
               jpeg: bool = False) -> str:
    return img(image_uri(path, max_side, jpeg), caption, width)


def _format(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return esc(value)


def table(frame: pd.DataFrame, caption: str | None = None, max_rows: int = 400) -> str:
    """A sortable HTML table (click a header to sort); long tables are cut with a note."""
    rows = frame.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in rows.columns)
    body = "".join("<tr>" + "".join(f"<td>{_format(v)}</td>" for v in r) + "</tr>"
                   for r in rows.itertuples(index=False))
    more = (f'<p class="note">{len(frame) - max_rows} more rows in the CSV.</p>'
            if len(frame) > max_rows else "")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="table"><table class="sortable">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>{more}")


def missing(what: str, command: str) -> str:
    """The note a section shows when its inputs do not exist yet."""
    return (f'<p class="missing">Not available yet: {esc(what)}. Run '
            f"<code>{esc(command)}</code> and then <code>lncr report</code> again.</p>")


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'
