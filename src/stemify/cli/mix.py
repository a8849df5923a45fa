"""``stemify mix DIR --gain vocals=0 --gain drums=0.5 -o out.wav``: the stems of a separation
summed at per-stem gains into one file (a karaoke or practice track). No model, so no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

import click

from stemify.cli.common import clip_mode_option, fail
from stemify.errors import StemifyError

_CONTAINERS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3"}


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--gain",
    "gains",
    multiple=True,
    metavar="STEM=GAIN",
    help="A stem's gain: 0 mutes it, 0.5 halves it, 1 (the default) keeps it. Repeatable.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The mix: .wav (16-bit), .flac or .mp3, by its extension.",
)
@clip_mode_option("How to avoid clipping when the sum goes past full scale.")
def mix(directory: Path, gains: tuple[str, ...], output: Path, clip_mode: str) -> None:
    """Mix the stems in DIRECTORY (vocals.wav, drums.wav, ...) into one file."""
    from stemify.audio import OutputFormat
    from stemify.audio.mix import find_stems, mix_stems, parse_gains

    container = _CONTAINERS.get(output.suffix.lower())
    if container is None:
        fail(f"-o {output}: end the name with .wav, .flac or .mp3")
    try:
        stems = find_stems(directory, exclude=output)
        levels = parse_gains(gains, stems)
        fmt = OutputFormat(container=cast(Literal["wav", "flac", "mp3"], container))
        clip = cast(Literal["rescale", "clamp", "none"], clip_mode)
        written = mix_stems(stems, levels, output, fmt=fmt, clip=clip)
    except StemifyError as exc:
        fail(exc.message)
    shown = ", ".join(f"{name} x{gain:g}" for name, gain in levels.items())
    click.echo(f"wrote {written} ({shown})")
