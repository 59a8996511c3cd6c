"""``lncr report STUDY.yaml``: assemble the sections into one self-contained HTML file.

The file has no external references: images are inlined, the style sheet and the small script
(sortable tables, click-to-zoom images) are in the page, so it opens from a USB stick without a
network. Written atomically to ``<output_dir>/report/report.html`` (or ``--out``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from lncr.fileio import atomic_write_text
from lncr.locks import locks_output
from lncr.report.assets import esc
from lncr.study.validate import Study

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;
background:#f7f8fa;line-height:1.45}
header{background:#243b53;color:#fff;padding:18px 32px}header h1{margin:0;font-size:1.5em}
header p{margin:4px 0 0;opacity:.85}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #d9e2ec;padding:8px 32px;
z-index:2}nav a{margin-right:16px;color:#334e68;text-decoration:none;font-weight:600}
main{max-width:1200px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #d9e2ec;border-radius:6px;padding:8px 22px 18px;
margin:18px 0}h2{color:#243b53;border-bottom:2px solid #d9e2ec;padding-bottom:4px}
h3{color:#334e68}figure{margin:8px 0}figcaption{font-size:.85em;color:#52606d}
img.zoom{cursor:zoom-in;border:1px solid #e4e7eb;max-height:560px;object-fit:contain}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.table{overflow-x:auto}table{border-collapse:collapse;font-size:.85em;margin:10px 0}
caption{text-align:left;font-weight:600;padding:4px 0;color:#334e68}
th,td{border:1px solid #d9e2ec;padding:3px 8px;text-align:right}
th{background:#f0f4f8;cursor:pointer;user-select:none}th:after{content:" \\2195";opacity:.4}
td:first-child,th:first-child{text-align:left}tr:nth-child(even) td{background:#fafbfc}
.missing{background:#fffbea;border-left:4px solid #f0b429;padding:8px 12px}
.note{color:#52606d;font-size:.9em}.failure{border:2px solid #c62828;background:#fdecea;padding:4px 12px;margin:8px 0}.protocol{border-left:4px solid #8a4b00;background:#fff8e1;padding:2px 12px;margin:8px 0}.estimate-optimistic{color:#8a4b00}code{background:#f0f4f8;padding:1px 4px;border-radius:3px}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:9;
cursor:zoom-out;align-items:center;justify-content:center}
#lightbox img{max-width:96vw;max-height:96vh;background:#fff}
"""

SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th){
  th.addEventListener('click',function(){
    var table=th.closest('table'),body=table.tBodies[0],i=Array.prototype.indexOf.call(
      th.parentNode.children,th),asc=th.dataset.asc!=='1';
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,
      p=parseFloat(x),q=parseFloat(y);
      var c=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y);return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
    th.parentNode.querySelectorAll('th').forEach(function(h){delete h.dataset.asc;});
    if(asc){th.dataset.asc='1';}
  });
});
var box=document.getElementById('lightbox');
document.querySelectorAll('img.zoom').forEach(function(im){
  im.addEventListener('click',function(){var big=document.createElement('img');
    big.src=im.src;big.alt=im.alt;box.replaceChildren(big);box.style.display='flex';});
});
box.addEventListener('click',function(){box.style.display='none';});
"""

SECTIONS = [("study", "Study"), ("tiling", "Tiling"), ("sweep", "Selection"),
            ("final", "Final models"), ("results", "Results"), ("explain", "Explanations"),
            ("methods", "Methods")]


def _left_out(name: str, exc: Exception) -> str:
    """In place of a section whose files cannot be read: which file, and how to rebuild it."""
    title = dict(SECTIONS)[name]
    return (f'<section id="{name}"><h2>{esc(title)}</h2><p class="failure">This section is left '
            f"out: {esc(exc)}</p></section>")


@locks_output
def build_report(study: Study, out: str | Path | None = None,
                 progress: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None) -> Path:
    """Write the study's HTML report; returns its path. A section whose output files are
    damaged is left out with a warning naming the file and the command that rebuilds it
    (``warn``, and a box in the report), so one broken file never costs the whole report."""
    from lncr.fileio import DamagedFile
    from lncr.report.methods import methods_section
    from lncr.report.sections import (
        explain_section,
        final_section,
        results_section,
        study_section,
        sweep_section,
        tiling_section,
    )
    cfg = study.config
    folder = cfg.output_dir
    parts = []
    for name, fn in (("study", study_section), ("tiling", tiling_section),
                     ("sweep", sweep_section), ("final", final_section),
                     ("results", results_section), ("explain", explain_section),
                     ("methods", methods_section)):
        try:
            parts.append(fn(folder))
        except (DamagedFile, KeyError, IndexError, TypeError, AttributeError) as exc:
            if not isinstance(exc, DamagedFile):  # an output without what lncr writes in it
                exc = DamagedFile(f"a file it reads lacks what lncr writes there "
                                  f"({type(exc).__name__}: {exc}): run the stage again")
            parts.append(_left_out(name, exc))
            if warn:
                warn(f"the report's {dict(SECTIONS)[name]} section is left out: {exc}")
        if progress:
            progress(name)
    from lncr import __version__

    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in SECTIONS)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(cfg.name)} — lncr report</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{esc(cfg.name)}: prediction of complete response in lupus "
            f"nephritis</h1><p>lncr {esc(__version__)} · {esc(stamp)} · "
            f"{esc(study.source['study'] or cfg.output_dir)}</p></header><nav>{nav}</nav><main>"
            + "".join(parts) +
            f'</main><div id="lightbox"></div>'
            f"<script>{SCRIPT}</script></body></html>")
    path = Path(out) if out else folder / "report" / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path
