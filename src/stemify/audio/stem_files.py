"""The stems of a directory: its audio files by stem name (``vocals.wav`` is stem ``vocals``),
as ``separate`` and the service write them; read by ``stemify evaluate`` and ``stemify mix``."""

from __future__ import annotations

from pathlib import Path

from stemify.errors import InvalidOptionError

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".aac",
        ".aif",
        ".aiff",
        ".wma",
        ".mka",
        ".webm",
        ".wv",
        ".ac3",
        ".alac",
        ".caf",
    }
)


def stem_files(directory: Path, role: str, exclude: Path | None = None) -> dict[str, Path]:
    """The ``<stem>.<ext>`` audio files of ``directory`` by stem name; ``role`` names the
    directory in errors, ``exclude`` is a file not to count (an output written there)."""
    if not directory.exists():
        raise InvalidOptionError(f"{role} directory not found: {directory}")
    if not directory.is_dir():
        raise InvalidOptionError(f"{role} path is not a directory: {directory}")
    files: dict[str, Path] = {}
    skip = exclude.resolve() if exclude is not None else None
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        if skip is not None and path.resolve() == skip:
            continue
        if path.stem in files:
            # Guessing which of two files is meant could score the wrong one silently.
            raise InvalidOptionError(
                f"{role} directory has two files for stem {path.stem!r}: "
                f"{files[path.stem].name} and {path.name}; keep one"
            )
        files[path.stem] = path
    if not files:
        raise InvalidOptionError(f"{role} directory has no audio files: {directory}")
    return files
