"""Engine benchmarks (``make bench``): speed, peak memory and fidelity, measured in one run.

Every measurement runs in a fresh child process, so peak RSS (``ru_maxrss``) is that run's own.
Models have random weights with the released htdemucs architecture (the real compute cost) or
the tiny test architecture for the long-input memory comparison. stemify runs on each backend
(``onnx``: onnxruntime; ``torch``: demucs' forward), against ``demucs.api.Separator``.

    python bench/bench_engine.py                 # everything, writes bench/out/results.json
    python bench/bench_engine.py --quick         # shorter clips, for a smoke run
    python bench/bench_engine.py --sections speed,profile --clips 180   # a part of it
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out"


def make_clip(path: Path, seconds: float) -> Path:
    """A music-like test signal: pink noise plus a chord, stereo 44.1 kHz wav."""
    if not path.exists():
        chord = "+".join(f"0.15*sin({f}*2*PI*t)" for f in (220, 277.2, 329.6))
        subprocess.run(
            [
                "ffmpeg", "-nostdin", "-v", "error", "-y",
                "-f", "lavfi", "-i", f"anoisesrc=d={seconds}:c=pink:r=44100:a=0.2",
                "-f", "lavfi", "-i", f"aevalsrc={chord}|{chord}:s=44100:d={seconds}",
                "-filter_complex",
                "[0:a]aformat=channel_layouts=stereo[n];[n][1:a]amix=inputs=2:normalize=0",
                "-c:a", "pcm_s16le", str(path),
            ],
            check=True,
        )  # fmt: skip
    return path


def build_models(directory: Path) -> None:
    from stemify.testing.random_models import (
        RELEASED_KWARGS,
        TINY_KWARGS,
        build_htdemucs,
        save_bag,
        save_model,
    )

    if not (directory / "released.yaml").exists():
        save_model(build_htdemucs(7, **RELEASED_KWARGS), directory, "bbbb0001")
        save_bag(directory, "released", ["bbbb0001"])
    if not (directory / "small.yaml").exists():
        save_model(build_htdemucs(8, **TINY_KWARGS), directory, "bbbb0002")
        save_bag(directory, "small", ["bbbb0002"])


# ---- children: each prints one JSON line with its wall time and peak RSS ----------------------


class _TimedBackend:
    """The backend under test, with the time spent in its forward passes counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0

    def forward(self, model: Any, batch: Any) -> Any:
        started = time.perf_counter()
        out = self.inner.forward(model, batch)
        self.seconds += time.perf_counter() - started
        return out

    def memory_bytes(self) -> int:
        return int(self.inner.memory_bytes())


def _child_stemify(
    backend: str, model_dir: Path, name: str, clip: Path, out: Path, shifts: int
) -> dict[str, Any]:
    import torch

    from stemify.engine import InferenceOptions, SeparationOptions, separate_file
    from stemify.engine.backends.choose import load_engine_model

    torch.set_num_threads(2)  # the worker's share of this machine's two cores, as a worker
    loaded = load_engine_model(name, model_dir, backend=backend)  # type: ignore[arg-type]
    timed = _TimedBackend(loaded.backend)
    started = time.perf_counter()
    options = SeparationOptions(inference=InferenceOptions(shifts=shifts))
    result = separate_file(clip, loaded.model, lambda stem: out / f"{stem}.wav", options,
                           backend=timed)  # fmt: skip
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "backend": timed.name,
        "stage_seconds": result.stage_seconds,
        "forward_seconds": timed.seconds,
        # Pass 2 minus the forward passes: decoding, overlap-add, quality meters, encoder writes.
        "pipeline_seconds": result.stage_seconds["separating"] - timed.seconds,
    }


def child_stemify(model_dir: Path, name: str, clip: Path, out: Path, shifts: int) -> dict[str, Any]:
    return _child_stemify("torch", model_dir, name, clip, out, shifts)


def child_stemify_onnx(
    model_dir: Path, name: str, clip: Path, out: Path, shifts: int
) -> dict[str, Any]:
    return _child_stemify("onnx", model_dir, name, clip, out, shifts)


def child_export(model_dir: Path, name: str, clip: Path, out: Path, shifts: int) -> dict[str, Any]:
    """A fresh export of ``name``'s core (into ``out``, a copy of its checkpoint): time, size."""
    import shutil

    import torch

    from stemify.engine.backends.choose import load_engine_model
    from stemify.models import check_installed

    torch.set_num_threads(2)
    for path in check_installed(name, model_dir):
        shutil.copy(path, out / path.name)
    shutil.copy(model_dir / f"{name}.yaml", out / f"{name}.yaml")
    started = time.perf_counter()
    loaded = load_engine_model(name, out, backend="onnx")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "export_mb": loaded.backend.memory_bytes() / 1e6}


def child_profile(model_dir: Path, name: str, clip: Path, out: Path, shifts: int) -> dict[str, Any]:
    """One segment through the onnx backend, step by step: STFT, core, masking + iSTFT."""
    import torch

    from stemify.engine.backends.choose import load_engine_model, sub_models
    from stemify.engine.backends.htdemucs_core import spectrogram, training_length
    from stemify.engine.backends.onnx_runtime import OnnxBackend

    torch.set_num_threads(2)
    loaded = load_engine_model(name, model_dir, backend="onnx")
    assert isinstance(loaded.backend, OnnxBackend)
    model = sub_models(loaded.model)[0]
    core = next(iter(loaded.backend._cores.values()))[1]
    mix = torch.randn(1, 2, training_length(model))
    best: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            padded, z, _ = spectrogram(model, mix)
            mag = model._magnitude(z)
            t1 = time.perf_counter()
            x, xt = core(padded, mag)
            t2 = time.perf_counter()
            _ = xt + model._ispec(model._mask(z, x), padded.shape[-1])
            t3 = time.perf_counter()
            torch_t = time.perf_counter()
            model(mix)
            t4 = time.perf_counter()
            for key, value in (("stft", t1 - t0), ("core", t2 - t1), ("istft_mask", t3 - t2),
                               ("torch_forward", t4 - torch_t)):  # fmt: skip
                best[key] = min(best.get(key, value), value)
    return {f"{key}_s": value for key, value in best.items()}


def child_demucs_api(
    model_dir: Path, name: str, clip: Path, out: Path, shifts: int
) -> dict[str, Any]:
    from demucs.api import Separator, save_audio

    separator = Separator(model=name, repo=model_dir, shifts=shifts, progress=False)
    started = time.perf_counter()
    _, stems = separator.separate_audio_file(clip)
    for stem, wav in stems.items():
        save_audio(wav, out / f"{stem}.wav", samplerate=separator.samplerate)
    return {"seconds": time.perf_counter() - started}


def child_apply_model(
    model_dir: Path, name: str, clip: Path, out: Path, shifts: int
) -> dict[str, Any]:
    """demucs' own core on the whole track in memory, as its CLI and API hold it."""
    import numpy as np
    import torch
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    from stemify.audio import decode_blocks

    model = get_model(name, repo=model_dir)
    started = time.perf_counter()
    wav = torch.from_numpy(
        np.concatenate(list(decode_blocks(clip, samplerate=44100, channels=2)), 1)
    )
    ref = wav.mean(0)
    wav = (wav - ref.mean()) / (ref.std() + 1e-8)
    out_t = apply_model(model, wav[None], shifts=shifts)[0]
    np.save(out / "estimate.npy", out_t.numpy()[:, :, :44100])
    return {"seconds": time.perf_counter() - started}


def child_fidelity(
    model_dir: Path, name: str, clip: Path, out: Path, shifts: int
) -> dict[str, Any]:
    """SDR of the streaming engine against apply_model on the same normalised input."""
    import numpy as np
    import torch
    from demucs.apply import apply_model

    from stemify.audio import decode_blocks
    from stemify.engine import InferenceOptions, stream_separate
    from stemify.models import load_model

    model = load_model(name, model_dir)
    wav = np.concatenate(list(decode_blocks(clip, samplerate=44100, channels=2)), 1)
    expected = apply_model(model, torch.from_numpy(wav)[None], shifts=0)[0].numpy()
    blocks = (wav[:, i : i + 65536] for i in range(0, wav.shape[1], 65536))
    got = np.concatenate(
        [o for _, o in stream_separate(model, blocks, wav.shape[1], InferenceOptions(shifts=0))], -1
    )
    sdr = [
        10 * np.log10((expected[k] ** 2).sum() / max(((expected[k] - got[k]) ** 2).sum(), 1e-30))
        for k in range(expected.shape[0])
    ]
    return {"min_sdr_db": float(min(sdr))}


CHILDREN = {
    "stemify": child_stemify,
    "stemify_onnx": child_stemify_onnx,
    "export": child_export,
    "profile": child_profile,
    "demucs_api": child_demucs_api,
    "apply_model": child_apply_model,
    "fidelity": child_fidelity,
}


def run_child(kind: str, model_dir: Path, name: str, clip: Path, shifts: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            *(sys.executable, __file__, "--child", kind, "--model-dir", str(model_dir)),
            *("--name", name, "--clip", str(clip), "--out", out, "--shifts", str(shifts)),
        ]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {kind:12s} {name:9s} {clip.name:12s} {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--shifts", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", default="export,speed,profile,memory,fidelity")
    parser.add_argument("--clips", help="speed clip lengths in seconds, e.g. 30,180")
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args.model_dir, args.name, args.clip, args.out, args.shifts)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "work"
    work.mkdir(exist_ok=True)
    models = work / "models"
    models.mkdir(exist_ok=True)
    build_models(models)
    short, long = (10, 30) if args.quick else (30, 180)
    clips = [int(c) for c in args.clips.split(",")] if args.clips else [short, long]
    sections = set(args.sections.split(","))
    memory_short, memory_long = (60, 300) if args.quick else (180, 1800)
    results: dict[str, Any] = {"speed": {}, "memory": {}, "fidelity": {}}

    if "export" in sections:
        print("export: released-size htdemucs core, fresh, then verified (time, file size)")
        results["export"] = run_child("export", models, "released", make_clip(work / "e.wav", 1))
    # Exported here, so that no timed run below pays for it (nor its memory).
    run_child("stemify_onnx", models, "released", make_clip(work / "e.wav", 1))

    print("speed: released-size htdemucs (random weights), shifts=1, file to wav stems")
    for seconds in clips if "speed" in sections else []:
        clip = make_clip(work / f"clip{seconds}.wav", seconds)
        onnx = run_child("stemify_onnx", models, "released", clip)
        ours = run_child("stemify", models, "released", clip)
        theirs = run_child("demucs_api", models, "released", clip)
        results["speed"][seconds] = {
            "stemify_onnx": onnx,
            "stemify": ours,
            "demucs_api": theirs,
            "onnx_over_demucs": onnx["seconds"] / theirs["seconds"],
            "onnx_over_torch": onnx["seconds"] / ours["seconds"],
            "speedup": theirs["seconds"] / ours["seconds"],
            "realtime_factor": ours["seconds"] / seconds,
        }

    if "profile" in sections:
        print("profile: one segment on the onnx backend, step by step (best of 3)")
        results["profile"] = run_child("profile", models, "released", make_clip(work / "e.wav", 1))

    print("memory: small model, short vs long input")
    for seconds in (memory_short, memory_long) if "memory" in sections else []:
        clip = make_clip(work / f"clip{seconds}.wav", seconds)
        results["memory"][seconds] = {
            "stemify_onnx": run_child("stemify_onnx", models, "small", clip),
            "stemify": run_child("stemify", models, "small", clip),
            "apply_model": run_child("apply_model", models, "small", clip),
        }
    for kind in ("stemify_onnx", "stemify", "apply_model") if "memory" in sections else []:
        ratio = (
            results["memory"][memory_long][kind]["peak_rss_mb"]
            / results["memory"][memory_short][kind]["peak_rss_mb"]
        )
        results["memory"][f"{kind}_long_over_short"] = ratio

    if "fidelity" in sections:
        print("fidelity: streaming engine vs apply_model, released-size model, shifts=0")
        results["fidelity"] = run_child(
            "fidelity", models, "released", make_clip(work / "clip30.wav", 30)
        )

    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
