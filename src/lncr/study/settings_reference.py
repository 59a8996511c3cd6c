"""The settings reference (``docs/settings.md``), generated from the pydantic models of
:mod:`lncr.study.config` so that it cannot drift from the code: every section and setting with
its type, default, allowed range and the comment beside it in the source.

    python -m lncr.study.settings_reference > docs/settings.md

A test compares the file with this output.
"""

from __future__ import annotations

import inspect
import json
import re
import typing

from pydantic import BaseModel

from lncr.study.config import StudyConfig

_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comments in the model's source: the block just above it and the one at
    the end of its line."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(model).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# ").strip())
            continue
        name = re.match(r"^\s+(\w+)\s*:", line)
        if name and name.group(1) in model.model_fields:
            end = _COMMENT.match(line)
            out[name.group(1)] = " ".join(above + ([end.group(2).strip()] if end else []))
        above = []
    return out


def _type(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    name = getattr(annotation, "__name__", None) or str(annotation)
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    # A pipe inside a table cell, even in code, ends the cell unless escaped (GFM tables).
    return f"`{text}`".replace("|", "\\|") \
        if name == str(annotation) or "[" in str(annotation) else f"`{name}`"


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if hasattr(value, "as_posix"):
        value = value.as_posix()
    return f"`{json.dumps(value, default=str)}`"


def _bounds(field) -> str:
    parts = []
    for item in field.metadata:
        for key, sign in _BOUNDS.items():
            if getattr(item, key, None) is not None:
                parts.append(f"{sign} {getattr(item, key)}")
    return ", ".join(parts)


def _section(name: str, model: type[BaseModel]) -> list[str]:
    doc = inspect.getdoc(model) or ""
    lines = [f"## `{name}`", "", doc.split("\n\n")[0].replace("\n", " "), "",
             "| setting | type | default | range | note |", "|---|---|---|---|---|"]
    notes = _comments(model)
    for key, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            continue
        lines.append(f"| `{name}.{key}` | {_type(field.annotation)} | {_default(field)} | "
                     f"{_bounds(field)} | {notes.get(key, '').replace('|', '/')} |")
    return lines + [""]


def reference_markdown() -> str:
    """The whole reference page."""
    lines = ["# Settings reference", "",
             "Generated from `lncr.study.config` by `python -m lncr.study.settings_reference` "
             "(a test keeps it in step with the code). Every setting can be written in "
             "`study.yaml` under its section or given on the command line as `--set "
             "section.setting=value`; [study.md](study.md) explains what they do and "
             "[fidelity.md](fidelity.md) how the defaults relate to the published method.", "",
             "| setting | type | default | note |", "|---|---|---|---|"]
    notes = _comments(StudyConfig)
    sections = []
    for key, field in StudyConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            sections.append((key, field.annotation))
            continue
        default = "required" if field.is_required() else _default(field)
        lines.append(f"| `{key}` | {_type(field.annotation)} | {default} | "
                     f"{notes.get(key, '').replace('|', '/')} |")
    lines.append("")
    for key, model in sections:
        lines += _section(key, model)
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(reference_markdown())
