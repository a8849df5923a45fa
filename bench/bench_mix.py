"""``stemify mix`` (``make bench``): wall time of mixing the four stems of a song into one WAV,
with hyperfine, for songs of a few lengths; the real-time factor is song length ÷ wall time.

Stems are 16-bit stereo 44.1 kHz WAV made by ffmpeg (sines and pink noise), as ``separate``
writes them. The command runs through this tree's ``src`` in the current virtualenv.

    python bench/bench_mix.py                 # writes bench/out/mix.json
    python bench/bench_mix.py --minutes 1     # one length only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).parent / "out"
SRC = Path(__file__).resolve().parent.parent / "src"
STEMS = {"vocals": 440, "drums": 110, "bass": 55, "other": 880}
ENTRY = "import sys; from stemify.cli.main import main; sys.argv[0] = 'stemify'; main()"


def make_stems(directory: Path, seconds: float) -> None:
    directory.mkdir(parents=True)
    for name, frequency in STEMS.items():
        source = f"sine=frequency={frequency}:sample_rate=44100:duration={seconds}"
        noise = f"anoisesrc=d={seconds}:c=pink:r=44100:a=0.05"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-f",
             "lavfi", "-i", noise, "-filter_complex", "amix=inputs=2:normalize=0", "-ac", "2",
             "-c:a", "pcm_s16le", str(directory / f"{name}.wav")],
            check=True,
        )  # fmt: skip


def measure(minutes: float, runs: int, scratch: Path) -> dict[str, float]:
    stems = scratch / f"song-{minutes:g}min"
    make_stems(stems, minutes * 60)
    out = scratch / f"mix-{minutes:g}.wav"
    command = shlex.join(
        [sys.executable, "-c", ENTRY, "mix", str(stems), "--gain", "vocals=0",
         "--gain", "drums=0.5", "-o", str(out)]
    )  # fmt: skip
    report = scratch / f"hyperfine-{minutes:g}.json"
    subprocess.run(
        ["hyperfine", "-N", "--warmup", "1", "--runs", str(runs), "--export-json", str(report),
         command],
        check=True, env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    result = json.loads(report.read_text())["results"][0]
    return {
        "minutes": minutes,
        "mean_s": result["mean"],
        "stddev_s": result["stddev"],
        "realtime_factor": minutes * 60 / result["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, action="append")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("hyperfine") is None:
        sys.exit("hyperfine is not installed (make setup installs it with apt-get)")
    with tempfile.TemporaryDirectory(prefix="stemify-bench-mix-") as scratch:
        rows = [measure(m, args.runs, Path(scratch)) for m in args.minutes or [1.0, 4.0]]
    OUT.mkdir(exist_ok=True)
    (OUT / "mix.json").write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(
            f"{row['minutes']:g} min: {row['mean_s']:.2f} ± {row['stddev_s']:.2f} s, "
            f"{row['realtime_factor']:.0f}x real time"
        )


if __name__ == "__main__":
    main()
