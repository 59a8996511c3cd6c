"""The model bundle's file: one ZIP archive (``*.lncr``) with a manifest and checksummed parts.

``manifest.json`` names the format and its version, the lncr version that wrote it, what the
bundle holds (:mod:`lncr.bundle.export`) and, for every other member, its size and SHA-256.
Opening a bundle (:func:`open_bundle`) checks, before anything is used:

- that it is a ZIP archive whose members all pass their CRC-32 (a flipped byte or a truncated
  file is refused);
- that it is an lncr bundle of a format version this lncr reads;
- that its members are exactly the manifest's parts, with their sizes and SHA-256 digests;
- that every member name is a plain relative path (no ``..``, no absolute path), so that
  extracting it cannot write outside the target folder.

Nothing in a bundle is unpickled: weights are safetensors, settings and results JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lncr import __version__
from lncr.errors import BadInput
from lncr.fileio import atomic_write_bytes, file_sha256, partial_path

FORMAT = "lncr-bundle"
#: The bundle layout this lncr writes and reads; a bundle of another version is refused.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PART = re.compile(r"^[A-Za-z0-9_.~%-]+(/[A-Za-z0-9_.~%-]+)*$")


class BundleError(BadInput):
    """A bundle cannot be used: not a bundle, damaged, tampered with, or of another format."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_part(name: str) -> str:
    """``name`` if it is a plain relative member path, else :class:`BundleError`."""
    if not _PART.match(name) or any(p in (".", "..") for p in name.split("/")):
        raise BundleError(f"bundle member {name!r} is not a plain relative path: the bundle "
                          "was not written by lncr; do not use it")
    return name


def write_bundle(path: Path, parts: dict[str, bytes], content: dict) -> Path:
    """Write ``parts`` and a manifest of ``content`` (plus the checksums) as one archive,
    atomically: the bundle appears under its name only when complete."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "lncr_version": __version__,
                **content,
                "parts": {name: {"bytes": len(data), "sha256": sha256_bytes(data)}
                          for name, data in sorted(parts.items())}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(_info(MANIFEST), json.dumps(manifest, indent=2, sort_keys=True),
                    zipfile.ZIP_DEFLATED)
        for name, data in sorted(parts.items()):
            method = zipfile.ZIP_STORED if name.endswith((".safetensors", ".pth", ".pt")) \
                else zipfile.ZIP_DEFLATED
            zf.writestr(_info(safe_part(name)), data, method)
    os.replace(tmp, path)
    return path


def _info(name: str) -> zipfile.ZipInfo:
    """A member with a fixed date: the same bundle content gives the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    return info


@dataclass
class Bundle:
    """An opened, verified bundle: its manifest and its parts (read on demand)."""

    path: Path
    manifest: dict
    sha256: str  # of the whole file: names this bundle in every score it makes

    def read(self, name: str) -> bytes:
        if name not in self.manifest["parts"]:
            raise BundleError(f"{self.path} has no part {name!r}")
        with zipfile.ZipFile(self.path) as zf:
            data = zf.read(name)
        if sha256_bytes(data) != self.manifest["parts"][name]["sha256"]:
            raise BundleError(f"{self.path}: part {name} changed since the bundle was opened")
        return data

    def json(self, name: str):
        return json.loads(self.read(name))

    def extract(self, name: str, target: Path) -> Path:
        """Write part ``name`` to ``target`` (atomically) and return it."""
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(target, self.read(name))


def open_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle (see the module docstring); :class:`BundleError` says why a
    bundle is refused."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file (make one with `lncr export "
                          "STUDY.yaml OUT.lncr`)")
    try:
        with zipfile.ZipFile(path) as zf:
            broken = zf.testzip()  # every member's CRC-32
            if broken is not None:
                raise BundleError(f"{path} is damaged: member {broken} fails its checksum; "
                                  "copy the bundle again from its source")
            members = {i.filename: i for i in zf.infolist()}
            manifest = json.loads(zf.read(MANIFEST)) if MANIFEST in members else None
            _check_manifest(path, manifest)
            _check_parts(path, zf, members, manifest["parts"])
    except BundleError:
        raise  # already says why (a newer format, an altered part)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path} is not a readable lncr bundle ({exc}): it is truncated, "
                          "damaged or another kind of file; copy it again from its source"
                          ) from exc
    return Bundle(path, manifest, file_sha256(path))


def _check_manifest(path: Path, manifest: dict | None) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not an lncr model bundle (no {MANIFEST} of format "
                          f"{FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path} was made by lncr {manifest.get('lncr_version', '?')} in bundle format "
            f"{version}; this lncr ({__version__}) reads format {FORMAT_VERSION} only: install "
            f"lncr {manifest.get('lncr_version', '?')} to use it, or export the study again "
            "with this version")
    if not isinstance(manifest.get("parts"), dict):
        raise BundleError(f"{path}: the manifest lists no parts")


def _check_parts(path: Path, zf: zipfile.ZipFile, members: dict, parts: dict) -> None:
    names = set(members) - {MANIFEST}
    extra, missing = sorted(names - set(parts)), sorted(set(parts) - names)
    if extra or missing:
        raise BundleError(f"{path} was altered: members {extra} are not in its manifest and "
                          f"parts {missing} are missing; use the bundle as exported")
    for name, want in parts.items():
        safe_part(name)
        data = zf.read(name)
        if len(data) != want["bytes"] or sha256_bytes(data) != want["sha256"]:
            raise BundleError(f"{path} was altered: part {name} does not match the SHA-256 its "
                              "manifest records; use the bundle as exported")
