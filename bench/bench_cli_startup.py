"""Command-line start-up (``make bench``): wall time of light ``stemify`` commands, before and
after, measured in one run with hyperfine (Debian: ``apt-get install hyperfine``).

*before* is the committed code (``git archive REF src``, REF defaults to HEAD, unpacked into a
temporary folder); *after* is this working tree's ``src``. Both run the same way, in the same
virtualenv: ``python -c "from stemify.cli.main import main; main()" ARGS`` with ``PYTHONPATH``
pointing at that ``src`` (the console script calls that same ``main``), each against its own
empty data and model directories. After committing the change, compare with its parent:
``--before HEAD~1``.

    python bench/bench_cli_startup.py                   # writes bench/out/cli-startup.json
    python bench/bench_cli_startup.py --runs 3 --quick  # smoke run: two commands
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out"
ROOT = Path(__file__).resolve().parent.parent

COMMANDS = [
    ["--help"],
    ["models", "list"],
    ["config", "show"],
    ["jobs", "list"],
    ["keys", "list"],
    ["separate", "--help"],
]
QUICK = [["--help"], ["models", "list"]]

ENTRY = "import sys; from stemify.cli.main import main; sys.argv[0] = 'stemify'; main()"
# The same entry, reporting afterwards which heavy modules the command imported.
PROBE = (
    "import atexit, sys; atexit.register(lambda: sys.stderr.write('\\n@@' + ','.join("
    "m for m in ('torch', 'demucs') if m in sys.modules) + '\\n')); " + ENTRY
)
# For scale: the interpreter alone, and torch alone.
REFERENCES = {"python -c pass": "pass", "python -c 'import torch'": "import torch"}


def unpack_committed(ref: str, into: Path) -> Path:
    """``src`` of commit ``ref``, read with ``git archive`` (no work tree, no index change)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def variant_env(src: Path, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMIFY_")}
    env["PYTHONPATH"] = str(src)
    env["STEMIFY_DATA_DIR"] = str(work / "data")
    env["STEMIFY_MODEL_DIR"] = str(work / "models")
    (work / "models").mkdir(parents=True, exist_ok=True)
    return env


def check_variant(src: Path, env: dict[str, str], commands: list[list[str]]) -> dict[str, str]:
    """Each command succeeds with that ``src``'s stemify; what it imported, per command."""
    where = subprocess.run(
        [sys.executable, "-c", "import stemify; print(stemify.__file__)"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(src):
        raise SystemExit(f"PYTHONPATH={src} imported stemify from {where}")
    heavy: dict[str, str] = {}
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"stemify {' '.join(args)} failed ({src}):\n{done.stderr}")
        heavy[" ".join(args)] = done.stderr.rpartition("@@")[2].strip() or "-"
    return heavy


def hyperfine(
    commands: dict[str, list[str]], env: dict[str, str], export: Path, runs: int
) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ms) per named command, from hyperfine's JSON export."""
    argv = ["hyperfine", "-N", "--warmup", "1", "--runs", str(runs), "--export-json", str(export)]
    for name, command in commands.items():
        # `=`: a name such as "--help" would otherwise be read as hyperfine's own option.
        argv += [f"--command-name={name}", shlex.join(command)]
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    results = json.loads(export.read_text())["results"]
    return {
        r["command"]: {"mean_ms": r["mean"] * 1e3, "sd_ms": (r["stddev"] or 0.0) * 1e3}
        for r in results
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="HEAD", help="Commit to compare with.")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="Two commands, no references.")
    args = parser.parse_args()
    if shutil.which("hyperfine") is None:
        raise SystemExit("hyperfine not found: apt-get install -y hyperfine")
    commands = QUICK if args.quick else COMMANDS
    OUT.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {"before": args.before, "runs": args.runs, "commands": {}}
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        work = Path(tmp)
        sources = {
            "before": unpack_committed(args.before, work / "before"),
            "after": ROOT / "src",
        }
        timed: dict[str, dict[str, dict[str, float]]] = {}
        heavy: dict[str, dict[str, str]] = {}
        for variant, src in sources.items():
            env = variant_env(src, work / f"{variant}-home")
            heavy[variant] = check_variant(src, env, commands)  # also creates the database
            named = {" ".join(a): [sys.executable, "-c", ENTRY, *a] for a in commands}
            print(f"{variant}: {len(named)} commands x {args.runs} runs", file=sys.stderr)
            timed[variant] = hyperfine(named, env, OUT / f"cli-startup-{variant}.json", args.runs)
        if not args.quick:
            refs = {name: [sys.executable, "-c", code] for name, code in REFERENCES.items()}
            results["references"] = hyperfine(
                refs, dict(os.environ), OUT / "cli-startup-references.json", args.runs
            )

    print(f"\nstemify start-up, mean ± sd of {args.runs} runs (hyperfine, 1 warm-up run)")
    print(f"before: `git archive {args.before}`; after: the working tree\n")
    print("| command | before | after | before ÷ after | imports (before → after) |")
    print("|---|---|---|---|---|")
    for name in (" ".join(a) for a in commands):
        b, a = timed["before"][name], timed["after"][name]
        results["commands"][name] = {
            "before": b,
            "after": a,
            "speedup": b["mean_ms"] / a["mean_ms"],
            "heavy_imports": {"before": heavy["before"][name], "after": heavy["after"][name]},
        }
        print(
            f"| `stemify {name}` | {_ms(b)} | {_ms(a)} | {b['mean_ms'] / a['mean_ms']:.1f} "
            f"| {heavy['before'][name]} → {heavy['after'][name]} |"
        )
    for name, figures in results.get("references", {}).items():
        print(f"| `{name}` (reference) | | {_ms(figures)} | | |")
    (OUT / "cli-startup.json").write_text(json.dumps(results, indent=2))


def _ms(figures: dict[str, float]) -> str:
    return f"{figures['mean_ms']:.0f} ± {figures['sd_ms']:.0f} ms"


if __name__ == "__main__":
    main()
