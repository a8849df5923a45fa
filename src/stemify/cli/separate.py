"""``stemify separate``: the demucs command line, on the streaming engine.

The engine and the models (torch, demucs) are imported when a separation runs, not when the
command line starts: ``stemify --help`` and the other commands do without them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stemify.audio import OutputFormat
from stemify.cli.common import (
    F,
    clip_mode_option,
    fail,
    model_dir_option,
    settings_from,
    show_backend_log,
)
from stemify.engine.params import default_of, help_of
from stemify.errors import InvalidOptionError, StemifyError

if TYPE_CHECKING:
    from stemify.engine import Progress, SeparationOptions, SeparationResult
    from stemify.engine.backends.choose import LoadedModel


def output_format(
    mp3: bool, mp3_bitrate: int, flac: bool, int24: bool, float32: bool
) -> OutputFormat:
    if mp3 and flac:
        raise InvalidOptionError("choose one of --mp3 and --flac")
    if int24 and float32:
        raise InvalidOptionError("choose one of --int24 and --float32")
    if mp3:
        return OutputFormat(container="mp3", mp3_bitrate=mp3_bitrate)
    depth = 24 if int24 else 32 if float32 else 16
    return OutputFormat(container="flac" if flac else "wav", bit_depth=depth)


def destination(template: str, out: Path, track: Path, ext: str) -> Any:
    def path_for(stem: str) -> Path:
        try:
            name = template.format(
                track=track.stem, trackext=track.suffix.lstrip("."), stem=stem, ext=ext
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidOptionError(
                f"bad --filename template {template!r}: "
                "use {track}, {trackext}, {stem} and {ext}"
            ) from exc
        return out / name

    return path_for


class _Bar:
    """One progress bar per file, on stderr, fed by the engine's progress callback."""

    def __init__(self, label: str, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=100, desc=label, unit="%", disable=not enabled, leave=False, file=sys.stderr
        )

    def __call__(self, progress: Progress) -> None:
        self._bar.set_postfix_str(progress.stage)
        self._bar.update(round(progress.fraction * 100) - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def _param_option(name: str, kind: type) -> Callable[[F], F]:
    """``--name`` with the default and help declared in :class:`SeparationParams`."""
    flag = "--" + name.replace("_", "-")
    return click.option(flag, type=kind, default=default_of(name), show_default=True,
                        help=help_of(name))  # fmt: skip


@click.command()
@click.argument("tracks", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-n", "--name", default="htdemucs", show_default=True, help="Model name.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("separated"),
    show_default=True,
    help="Folder of the results; stems go under OUT/MODEL/.",
)
@click.option("--two-stems", metavar="STEM", help=help_of("two_stems"))
@click.option("--stems", metavar="LIST", help=help_of("stems"))
@click.option("--mp3", is_flag=True, help="Write mp3.")
@_param_option("mp3_bitrate", int)
@click.option("--flac", is_flag=True, help="Write flac (16-bit, or 24 with --int24).")
@click.option("--int24", is_flag=True, help="24-bit integer wav or flac.")
@click.option("--float32", is_flag=True, help="32-bit float wav.")
@_param_option("shifts", int)
@_param_option("overlap", float)
@click.option("--segment", type=float, help="Segment length in seconds (default: the model's).")
@clip_mode_option("How to avoid clipping.")
@click.option("-d", "--device", help="cpu or cuda (default: STEMIFY_DEVICE or cpu).")
@click.option(
    "--batch-size", type=int, help="Segments per forward pass (default: STEMIFY_BATCH_SIZE)."
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnx"]),
    help="What runs the network (default: STEMIFY_BACKEND or auto: onnxruntime where it can).",
)
@click.option(
    "--filename",
    default="{track}/{stem}.{ext}",
    show_default=True,
    help="Output name template: {track}, {trackext}, {stem}, {ext}.",
)
@model_dir_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the results and quality reports as JSON."
)
def separate(
    tracks: tuple[Path, ...],
    name: str,
    out: Path,
    two_stems: str | None,
    stems: str | None,
    mp3: bool,
    mp3_bitrate: int,
    flac: bool,
    int24: bool,
    float32: bool,
    shifts: int,
    overlap: float,
    segment: float | None,
    clip_mode: str,
    device: str | None,
    batch_size: int | None,
    backend: str | None,
    filename: str,
    model_dir: Path | None,
    as_json: bool,
) -> None:
    """Separate TRACKS into stems."""
    from stemify.engine import InferenceOptions, SeparationOptions
    from stemify.engine.backends.choose import load_engine_model

    settings = settings_from(model_dir)
    show_backend_log()
    try:
        fmt = output_format(mp3, mp3_bitrate, flac, int24, float32)
        fmt.validate()
        options = SeparationOptions(
            inference=InferenceOptions(
                shifts=shifts,
                overlap=overlap,
                segment=segment,
                batch_size=batch_size or settings.batch_size,
                device=device or settings.device,
            ),
            output=fmt,
            clip=clip_mode,  # type: ignore[arg-type]
            stems=tuple(s.strip() for s in stems.split(",") if s.strip()) if stems else None,
            two_stems=two_stems,
        )
        loaded = load_engine_model(
            name,
            settings.model_dir,
            backend=backend or settings.backend,  # type: ignore[arg-type]
            device=options.inference.device,
            export_dir=settings.export_dir,
        )
    except StemifyError as exc:
        fail(exc.message)
    results = []
    failures = 0
    for track in tracks:
        result = _separate_one(track, loaded, out / name, filename, options)
        if result is None:
            failures += 1
            continue
        results.append(_summary(track, result))
        if not as_json:
            click.echo(f"{track}: {len(result.stems)} stems in {_common_folder(result)}")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if failures:
        sys.exit(1)


def _separate_one(
    track: Path,
    loaded: LoadedModel,
    out: Path,
    template: str,
    options: SeparationOptions,
) -> SeparationResult | None:
    from stemify.engine import separate_file

    bar = _Bar(track.name, enabled=sys.stderr.isatty())
    try:
        return separate_file(
            track,
            loaded.model,
            destination(template, out, track, options.output.extension),
            options,
            on_progress=bar,
            backend=loaded.backend,
        )
    except StemifyError as exc:
        click.echo(f"stemify: error: {track}: {exc.message}", err=True)
        return None
    finally:
        bar.close()


def _common_folder(result: SeparationResult) -> Path:
    parents = {path.parent for path in result.stems.values()}
    return parents.pop() if len(parents) == 1 else Path(".")


def _summary(track: Path, result: SeparationResult) -> dict[str, Any]:
    return {
        "track": str(track),
        "duration_s": round(result.samples / result.samplerate, 3),
        "stems": {name: str(path) for name, path in result.stems.items()},
        "quality": result.quality.to_dict(),
        "stage_seconds": {stage: round(s, 3) for stage, s in result.stage_seconds.items()},
    }
