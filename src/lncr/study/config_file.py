"""Reading ``study.yaml`` into a :class:`~lncr.study.config.StudyConfig`: YAML with every key
unique, command-line overrides (``tiling.tile_size=256``) applied before validation, and
validation errors that name the key, its line in the file (or the override that set it) and
the closest valid key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lncr.identifiers import shown
from lncr.study.config import StudyConfig, StudyConfigError

#: The most values a study YAML (or one ``--set`` value) may hold once its aliases (``&a`` …
#: ``*a``) are expanded: a few nested aliases can stand for billions of values.
MAX_VALUES = 100_000


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line number (1-based) of every mapping key, by its path."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = path + (str(key.value),)
                lines[p] = key.start_mark.line + 1
                walk(value, p)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = StudyConfig
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _overridden(overrides: list[str] | dict | None) -> dict[tuple[str, ...], str]:
    """Key path → the ``--set`` text that set it."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return {tuple(k.split(".")): f"{k}={v}" for k, v in overrides.items()}
    return {parse_override(t)[0]: t for t in overrides}


def _where(loc: tuple[str, ...], lines: dict[tuple[str, ...], int], source: str,
           overridden: dict[tuple[str, ...], str]) -> str:
    """Where a setting came from: the ``--set`` that gave it, else its line in the file."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in overridden:
            return f"--set {overridden[loc[:n]]}"
    line = lines.get(loc) or lines.get(loc[:-1])
    return f"{source} line {line}" if line else source


def _describe(errors: list[dict], lines: dict[tuple[str, ...], int], source: str,
              overridden: dict[tuple[str, ...], str] | None = None) -> list[str]:
    out = []
    for err in errors:
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc)
        where = _where(loc, lines, source, overridden or {})
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            prefix = ".".join(loc[:-1] + (close[0],)) if close else None
            hint = f"did you mean '{prefix}'?" if close else f"valid keys here: {', '.join(valid)}"
            out.append(f"{where}: unknown key '{dotted}' ({hint})")
        elif err["type"] == "missing":
            out.append(f"{where}: '{dotted}' is required (add '{loc[-1]}: <path>' to the YAML)")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            out.append(f"{where}: {dotted or 'study'}: {err['msg']}{shown}")
    return out


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias expanded (an alias is the same
    node object as its anchor, so each is counted once per use)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node that contains itself (a recursive alias) counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def safe_yaml(text: str, where: Path | None, what: str = "") -> Any:
    """YAML ``text`` through the safe loader (every key unique), refused as a
    :class:`StudyConfigError` — never a library error — when it is not YAML, is nested
    beyond Python's stack, or expands beyond :data:`MAX_VALUES` values through aliases.
    ``what`` prefixes the messages (``override 'x=…'``)."""
    prefix = f"{what}: " if what else ""
    try:
        root = yaml.compose(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader subclass
        if root is not None and _expanded_size(root, {}) > MAX_VALUES:
            raise StudyConfigError(where, [
                f"{prefix}its aliases (&name … *name) expand to more than {MAX_VALUES:,} "
                "values: write the settings out instead"])
        return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise StudyConfigError(where, [f"{prefix}not valid YAML: {shown(str(exc), 300)}"]
                               ) from exc
    except RecursionError as exc:
        raise StudyConfigError(where, [f"{prefix}nested too deeply to read"]) from exc


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``'tiling.tile_size=256'`` → (('tiling', 'tile_size'), 256). Values are YAML scalars,
    flow lists (``stains=[HE, PAS]``) or flow mappings (merged into the section)."""
    if "=" not in text:
        raise StudyConfigError(None, [f"override '{shown(text, 80)}' must look like "
                                      "section.key=value"])
    key, _, value = text.partition("=")
    path = tuple(p.strip() for p in key.strip().split("."))
    if not all(path):
        raise StudyConfigError(None, [f"override '{shown(text, 80)}' has an empty key"])
    return path, (safe_yaml(value, None, f"override '{shown(key, 80)}'") if value.strip()
                  else "")


def apply_overrides(data: dict, overrides: list[str] | dict | None) -> dict:
    """Deep-merge dotted-key overrides into a raw settings mapping (returns a new dict): a
    mapping value (``training={epochs: 9}``) is merged into the section, not put in its
    place."""
    import copy

    from lncr.study.recipes import merge_under

    out = copy.deepcopy(data)
    if not overrides:
        return out
    items = (overrides.items() if isinstance(overrides, dict)
             else (parse_override(o) for o in overrides))
    for path, value in items:
        path = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StudyConfigError(None, [f"override {'.'.join(path)}: '{part}' is not a section"])
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            value = merge_under(node[path[-1]], value)
        node[path[-1]] = value
    return out


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key that a mapping repeats (PyYAML keeps the last one
    silently, so a second ``training:`` block would drop the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping (first on line "
                    f"{seen[key] + 1}): merge the two", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] | dict | None = None) -> StudyConfig:
    """Read and validate ``study.yaml``. Table and output paths are made absolute (relative
    paths are relative to the YAML file's folder). Raises :class:`StudyConfigError` listing
    every problem."""
    path = Path(path)
    if not path.exists():
        raise StudyConfigError(path, [f"file not found (expected a study YAML at {path})"])
    if not path.is_file():
        raise StudyConfigError(path, ["not a file: give the study's YAML file"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StudyConfigError(path, [f"not UTF-8 text (byte {exc.start}): save it as UTF-8"]
                               ) from exc
    data = safe_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StudyConfigError(path, ["the YAML must be a mapping with at least 'patients:' "
                                      "and 'slides:'"])
    data = apply_overrides(data, overrides)
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise StudyConfigError(path, _describe(exc.errors(), _yaml_lines(text), path.name,
                                               _overridden(overrides))) from exc
    base = path.resolve().parent
    tiling = config.tiling.model_copy(update={"reference_images": {
        k: (base / v).resolve() for k, v in config.tiling.reference_images.items()}})
    sweep = config.sweep.model_copy(update={"weights": {
        k: (base / v).resolve() for k, v in config.sweep.weights.items()}})
    return config.model_copy(update={
        "sweep": sweep,
        "patients": (base / config.patients).resolve(),
        "slides": (base / config.slides).resolve(),
        "output_dir": (base / config.output_dir).resolve(),
        "tiling": tiling,
    })
