"""The official Demucs models, and the models found in a model directory.

The official list is built from the ``remote/files.txt`` and ``remote/<name>.yaml`` files that
the installed demucs package ships, so URLs and bag definitions always match the demucs version
that will load them. They are read as package data, without importing demucs (whose
``demucs.pretrained`` imports torch): listing models must not cost torch's start-up. A model
directory uses demucs' own local layout: ``<sig>-<sha8>.th`` weights plus ``<name>.yaml`` bags
listing signatures.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stemify.errors import ModelLoadError

FOUR_STEMS = ("drums", "bass", "other", "vocals")
SIX_STEMS = (*FOUR_STEMS, "guitar", "piano")


@dataclass(frozen=True)
class ModelFile:
    """One weight file: ``<sig>-<sha8>.th`` under ``url_path`` relative to the base URL."""

    name: str
    url_path: str
    # Full sha256 when published somewhere we could check, else the 8-hex prefix from the name.
    sha256: str
    size: int | None

    @property
    def signature(self) -> str:
        return self.name.split("-", 1)[0]


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    description: str
    sources: tuple[str, ...]
    files: tuple[ModelFile, ...]
    # Written as ``<name>.yaml`` next to the weights; identical to demucs' remote yaml.
    bag_yaml: str
    needs_diffq: bool
    # HTDemucs-family, not quantized: the onnx backend can run it (stemify.engine.backends).
    runtime_capable: bool = False

    @property
    def size_bytes(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


@dataclass(frozen=True)
class ModelStatus:
    name: str
    description: str
    # Empty when unknown (a local model whose checkpoint could not be read).
    sources: tuple[str, ...]
    installed: bool
    size_bytes: int | None
    official: bool
    runtime_capable: bool = False


@dataclass(frozen=True)
class _Official:
    description: str
    sources: tuple[str, ...]
    needs_diffq: bool = False
    runtime_capable: bool = False


_OFFICIAL: dict[str, _Official] = {
    "htdemucs": _Official(
        "Hybrid Transformer Demucs, 4 stems, the default: good quality, fast",
        FOUR_STEMS,
        runtime_capable=True,
    ),
    "htdemucs_ft": _Official(
        "fine-tuned bag of 4 htdemucs, best quality, 4x slower", FOUR_STEMS, runtime_capable=True
    ),
    "htdemucs_6s": _Official(
        "6 stems: adds guitar and piano (piano is weak)", SIX_STEMS, runtime_capable=True
    ),
    "hdemucs_mmi": _Official("Hybrid Demucs v3 trained on extra data", FOUR_STEMS),
    "mdx": _Official("Demucs v3 bag trained on MusDB HQ only, won MDX 2021 track A", FOUR_STEMS),
    "mdx_extra": _Official(
        "Demucs v3 bag trained on extra data, 2nd in MDX 2021 track B", FOUR_STEMS
    ),
    "mdx_q": _Official("quantized mdx, smaller download, needs diffq", FOUR_STEMS, True),
    "mdx_extra_q": _Official(
        "quantized mdx_extra, smaller download, needs diffq", FOUR_STEMS, True
    ),
}

# Full sha256 and byte size of official files, as pinned in model manifests and lock files of
# several unrelated public projects that vendor these weights (a desktop karaoke app's
# runtime lock generator, a serverless separation worker's weights manifest, a voice-over
# deployment plan's model manifest, a piano-isolation app's model spec). htdemucs and the
# htdemucs_ft parts appear with identical values in two independent projects. Every hash starts
# with the 8 hex digits demucs put in the file name (checked by the tests). mdx_q was not found:
# its files keep the 8-hex prefix and an unknown size.
_PUBLISHED: dict[str, tuple[str, int]] = {
    "955717e8-8726e21a.th": (
        "8726e21a993978c7ba086d3872e7608d7d5bfca646ca4aca459ffda844faa8b4",
        84_141_911,
    ),
    "f7e0c4bc-ba3fe64a.th": (
        "ba3fe64ae8ef66ac9a4857222ce48efbdc5eb3ad375cb79dd13debee5aaa4066",
        84_141_271,
    ),
    "d12395a8-e57c48e6.th": (
        "e57c48e6b0e38af4f7118d7bd08c49f0a0c0edf7d09143bdd902ea0d237303e6",
        84_141_271,
    ),
    "92cfc3b6-ef3bcb9c.th": (
        "ef3bcb9c8b40d14ae5d51b6db2587339cc12c6b77c0be151ce6d69002e087bf2",
        84_141_271,
    ),
    "04573f0d-f3cf25b2.th": (
        "f3cf25b222c4eed7cd49dd8b2c9597d50c18bd154090f7b919cfa5f93cf22c49",
        84_141_271,
    ),
    "5c90dfd2-34c22ccb.th": (
        "34c22ccb381c6f9fdbf324f04e1e2fe21aaaf293f5ded163a162697ff9a02ddd",
        54_996_327,
    ),
    "75fc33f5-1941ce65.th": (
        "1941ce654b11df4132b9f4eae408556b4c83fad6fe26b4bc0dbcb36b975befb3",
        167_407_275,
    ),
    "0d19c1c6-0f06f20e.th": (
        "0f06f20ed6ddc8058fa72ccc4845f3a88916eff7d007b623924193de217bbcf4",
        178_048_329,
    ),
    "7ecf8ec1-70f50cc9.th": (
        "70f50cc947d08f32e6dd8e2b687d398fa5ef9e51d1bd7600e32205d1f44be6b9",
        178_048_329,
    ),
    "c511e2ab-fe698775.th": (
        "fe6987756a7087d339bf63b19bb481b12cea02d3bc0de7583df7597210209649",
        167_334_095,
    ),
    "7d865c68-3d5dd56b.th": (
        "3d5dd56b5bc986f136dff98655ded22b2b033f465ccec7a28640a6b15fd71ed6",
        167_918_783,
    ),
    "e51eebcc-c1b80bdd.th": (
        "c1b80bdd6de58274abf359e66822a76f49ce2b9f086fc5dc917ac14598e6bebf",
        167_399_275,
    ),
    "a1d90b5c-ae9d2452.th": (
        "ae9d245283bf24b552913ee233a1101dcd0aeaed59b1c0a2da0e1f6eda15101b",
        167_391_595,
    ),
    "5d2d6c55-db83574e.th": (
        "db83574e05b2308f76e2764819da673f2d16d437b9e619f5fcb72f275fc0e24f",
        167_391_595,
    ),
    "cfa93e08-61801ae1.th": (
        "61801ae1567d606c97a9c3469e943ae306d0a873eeb60d623ae7cfc7042b3f68",
        167_399_275,
    ),
    "83fc094f-4a16d450.th": (
        "4a16d450fd8c9277494e23865cadaa4a3e64141c45411d84243b8c95ea4b7cae",
        50_756_993,
    ),
    "464b36d7-e5a9386e.th": (
        "e5a9386ecbf6f30bb2bdc7ae162f471d87f3b5bffba1a8cb2cebe4403280967e",
        38_893_153,
    ),
    "14fc6a69-a89dd0ee.th": (
        "a89dd0eeb547221dcfd6c0a47baa768ce0bce548eaf86b9a404d6b1088b5d22f",
        38_491_885,
    ),
    "7fd6ef75-a905dd85.th": (
        "a905dd8548f7389f1a3686c24c09d7bee61b716e3372e778e2acec88333ecdf4",
        39_436_529,
    ),
}


def file_name_hash(file_name: str) -> str | None:
    """The checksum part of ``<sig>-<hash>.th`` (split as demucs' LocalRepo does), if any."""
    stem = file_name.removesuffix(".th")
    return stem.rsplit("-", 1)[1] if "-" in stem else None


def file_signature(file_name: str) -> str:
    stem = file_name.removesuffix(".th")
    return stem.rsplit("-", 1)[0] if "-" in stem else stem


def _model_file(file_name: str, url_path: str) -> ModelFile:
    prefix = file_name_hash(file_name) or ""
    sha256, size = _PUBLISHED.get(file_name, (prefix, None))
    if not sha256.startswith(prefix):
        raise AssertionError(f"published sha256 of {file_name} does not match its name")
    return ModelFile(name=file_name, url_path=url_path, sha256=sha256, size=size)


def demucs_remote_dir() -> Path:
    """demucs' ``remote/`` package data (``files.txt``, ``<name>.yaml``), found without
    importing demucs: ``find_spec`` of a top-level package locates it and runs none of it."""
    spec = importlib.util.find_spec("demucs")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        remote = Path(location) / "remote"
        if (remote / "files.txt").is_file():
            return remote
    raise ModelLoadError("demucs is not installed (pip install -r requirements.lock)")


def parse_remote_files(text: str) -> dict[str, str]:
    """Signature -> URL path relative to demucs' host, from ``remote/files.txt``.

    The arithmetic of ``demucs.pretrained._parse_remote_files`` (``root:`` lines set the folder
    of the lines after them), without demucs' host in front: the base URL stays ours to choose
    (a mirror, or a local server in tests)."""
    root = ""
    paths: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
            continue
        sig = line.split("-", 1)[0]
        if sig in paths:
            raise ValueError(f"demucs' files.txt lists signature {sig} twice")
        paths[sig] = root + line
    return paths


@functools.cache
def official_catalogue() -> dict[str, CatalogueEntry]:
    """The official models, in display order. Read-only data from the installed demucs."""
    remote = demucs_remote_dir()
    url_paths = parse_remote_files((remote / "files.txt").read_text())
    catalogue: dict[str, CatalogueEntry] = {}
    for name, info in _OFFICIAL.items():
        bag_yaml = (remote / f"{name}.yaml").read_text()
        signatures: list[str] = yaml.safe_load(bag_yaml)["models"]
        files = tuple(
            _model_file(url_paths[sig].rsplit("/", 1)[-1], url_paths[sig]) for sig in signatures
        )
        catalogue[name] = CatalogueEntry(
            name=name,
            description=info.description,
            sources=info.sources,
            files=files,
            bag_yaml=bag_yaml,
            needs_diffq=info.needs_diffq,
            runtime_capable=info.runtime_capable,
        )
    return catalogue


def local_signatures(model_dir: Path) -> dict[str, list[Path]]:
    """Weight files in ``model_dir`` by signature (more than one per signature is an error
    demucs refuses to load)."""
    found: dict[str, list[Path]] = {}
    if not model_dir.is_dir():
        return found
    for path in sorted(model_dir.iterdir()):
        if path.suffix == ".th" and path.is_file():
            found.setdefault(file_signature(path.name), []).append(path)
    return found


def read_bag_signatures(bag_path: Path) -> list[str]:
    """Signatures listed by a ``<name>.yaml`` bag; ValueError if it is not a demucs bag."""
    try:
        bag = yaml.safe_load(bag_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {bag_path.name}: {exc}") from exc
    models = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise ValueError(f"{bag_path.name} is not a demucs bag (no `models:` list)")
    return models


def local_models(model_dir: Path) -> list[str]:
    """Names of the ``<name>.yaml`` bags in ``model_dir``, sorted.

    Bare ``<sig>-*.th`` files are not listed: they are the parts of bags (htdemucs_ft has four)
    and listing them would show every part as a model. ``load_model`` still accepts a bare
    signature by name."""
    if not model_dir.is_dir():
        return []
    return sorted(p.stem for p in model_dir.glob("*.yaml") if p.is_file())


def _bag_files(model_dir: Path, name: str) -> list[Path] | None:
    """The weight files of bag ``name``, or None if the bag or any of its weights is missing."""
    bag_path = model_dir / f"{name}.yaml"
    if not bag_path.is_file():
        return None
    try:
        signatures = read_bag_signatures(bag_path)
    except ValueError:
        return None
    on_disk = local_signatures(model_dir)
    files: list[Path] = []
    for sig in signatures:
        paths = on_disk.get(sig)
        if not paths:
            return None
        files.append(paths[0])
    return files


def checkpoint_sources(path: Path) -> tuple[str, ...]:
    """The sources a demucs checkpoint was built with, read without loading its weights."""
    return checkpoint_facts(path)[0]


def checkpoint_facts(path: Path) -> tuple[tuple[str, ...], bool]:
    """The sources a demucs checkpoint was built with, and whether the onnx backend can run it
    (an HTDemucs, not quantized), read without loading its weights.

    mmap leaves the tensors on disk, so this costs the pickle only, not the 80 MB of weights;
    the answer is remembered per file version, since every job submission lists the models.
    The pickle is trusted in the same way loading the model trusts it. torch is imported here,
    only when a local (non-official) bag is listed: official models need no checkpoint read."""
    try:
        stat = path.stat()
    except OSError:
        return (), False
    return _checkpoint_sources(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _checkpoint_sources(path: Path, _mtime_ns: int, _size: int) -> tuple[tuple[str, ...], bool]:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            package: Any = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        klass = package.get("klass")
        capable = getattr(klass, "__name__", "") == "HTDemucs" and not package.get("state", {}).get(
            "__quantized"
        )
        sources = package["kwargs"].get("sources")
        if sources is None:
            # Older checkpoints may pass sources positionally; nothing reliable to read then.
            return (), capable
        return tuple(str(s) for s in sources), capable
    except Exception:
        return (), False


def list_models(model_dir: Path) -> list[ModelStatus]:
    """Every official model (installed or not) followed by other bags found in ``model_dir``."""
    catalogue = official_catalogue()
    statuses: list[ModelStatus] = []
    for entry in catalogue.values():
        files = _official_files(model_dir, entry)
        installed = files is not None
        statuses.append(
            ModelStatus(
                name=entry.name,
                description=entry.description,
                sources=entry.sources,
                installed=installed,
                size_bytes=_total_size(files) if files is not None else entry.size_bytes,
                official=True,
                runtime_capable=entry.runtime_capable,
            )
        )
    for name in local_models(model_dir):
        if name in catalogue:
            continue
        files = _bag_files(model_dir, name)
        facts = [checkpoint_facts(path) for path in dict.fromkeys(files or [])]
        statuses.append(
            ModelStatus(
                name=name,
                description="local model",
                sources=facts[0][0] if facts else (),
                installed=files is not None,
                size_bytes=_total_size(files) if files is not None else None,
                official=False,
                runtime_capable=bool(facts) and all(capable for _, capable in facts),
            )
        )
    return statuses


def _official_files(model_dir: Path, entry: CatalogueEntry) -> list[Path] | None:
    if not (model_dir / f"{entry.name}.yaml").is_file():
        return None
    paths = [model_dir / f.name for f in entry.files]
    return paths if all(p.is_file() for p in paths) else None


def _total_size(files: list[Path]) -> int:
    # A bag may list the same signature twice; its file is stored (and counted) once.
    return sum(p.stat().st_size for p in set(files))
