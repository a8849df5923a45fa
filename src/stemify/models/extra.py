"""Extra downloadable models from a YAML file (``STEMIFY_MODEL_CATALOGUE``), beside the official
ones: a private mirror's fine-tuned models, or a test server's random-weight one.

The file maps a model name to its description, sources and weight files::

    mymodel:
      description: our fine-tuned htdemucs
      sources: [drums, bass, other, vocals]
      files:
        - {name: 0a1b2c3d-9f8e7d6c.th, url_path: ours/0a1b2c3d-9f8e7d6c.th,
           sha256: <64 hex>, size: 84141911}

The bag written beside the weights lists the files' signatures in that order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from stemify.errors import ConfigurationError
from stemify.models.catalogue import CatalogueEntry, ModelFile, official_catalogue

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.th")


def _bad(path: Path, detail: str) -> ConfigurationError:
    return ConfigurationError(f"STEMIFY_MODEL_CATALOGUE {path}: {detail}")


def _file(path: Path, model: str, raw: Any) -> ModelFile:
    if not isinstance(raw, dict):
        raise _bad(path, f"{model}: every entry of files must be a mapping")
    name, url_path = str(raw.get("name", "")), str(raw.get("url_path", ""))
    sha256, size = str(raw.get("sha256", "")).lower(), raw.get("size")
    if not _FILE_NAME.fullmatch(name):
        raise _bad(path, f"{model}: file name {name!r} is not a <signature>-<hash>.th name")
    if not url_path:
        raise _bad(path, f"{model}: {name} has no url_path")
    # A full checksum is what makes a download from a mirror trustworthy; no prefixes here.
    if not _SHA256.fullmatch(sha256):
        raise _bad(path, f"{model}: {name} needs a full sha256 (64 hex digits)")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise _bad(path, f"{model}: size of {name} must be a positive number of bytes")
    return ModelFile(name=name, url_path=url_path, sha256=sha256, size=size)


def read_catalogue_file(path: Path) -> dict[str, CatalogueEntry]:
    """The models of one catalogue file; ConfigurationError saying what is wrong with it."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _bad(path, f"cannot read it ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise _bad(path, "expected a mapping of model names to models")
    entries: dict[str, CatalogueEntry] = {}
    for name, raw in data.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("files"), list) or not raw["files"]:
            raise _bad(path, f"{name}: needs a non-empty list of files")
        files = tuple(_file(path, str(name), f) for f in raw["files"])
        sources = raw.get("sources") or ["drums", "bass", "other", "vocals"]
        entries[str(name)] = CatalogueEntry(
            name=str(name),
            description=str(raw.get("description") or "model from the extra catalogue"),
            sources=tuple(str(s) for s in sources),
            files=files,
            bag_yaml=yaml.safe_dump({"models": [f.signature for f in files]}),
            needs_diffq=False,
        )
    return entries


def full_catalogue(extra: Path | None) -> Mapping[str, CatalogueEntry]:
    """The official models, then those of the extra file (which may not rename an official one)."""
    official = official_catalogue()
    if extra is None:
        return official
    entries = read_catalogue_file(extra)
    clash = sorted(set(entries) & set(official))
    if clash:
        raise _bad(extra, f"{', '.join(clash)}: already an official model's name")
    return {**official, **entries}
