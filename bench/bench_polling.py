"""Status polling through `stemify serve`, this tree against an earlier commit, alternating in
one run so the ratio is not at the mercy of a noisy machine.

    python bench/bench_polling.py --before ad3657e [--rounds 2]

The earlier commit is checked out with `git worktree` under bench/out/ and run with
PYTHONPATH pointing at its `src` (the editable install is a plain path entry, which
PYTHONPATH precedes). Variants: the earlier commit, this tree, and this tree with
STEMIFY_LOG_LEVEL=warning (no per-request log line).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import OUT, build_models, make_clip
from bench_service import poll_load, start_server, submit_and_wait

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="ad3657e", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    work = OUT / "work"
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    build_models(models)
    clip = make_clip(work / "clip5.wav", 5)
    old = OUT / "before-tree"
    subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(old)])
    subprocess.run(
        ["git", "-C", str(HERE), "worktree", "add", "--detach", str(old), args.before], check=True
    )
    variants = {
        f"before ({args.before})": (old / "src", "info"),
        "this tree": (HERE / "src", "info"),
        "this tree, log level warning": (HERE / "src", "warning"),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    port = 8770
    try:
        for _ in range(args.rounds):
            for name, (src, level) in variants.items():
                os.environ["PYTHONPATH"] = str(src)
                os.environ["STEMIFY_LOG_LEVEL"] = level
                data = work / "polling-data"
                subprocess.run(["rm", "-rf", str(data)], check=True)
                port += 1
                server = start_server(models, data, port)
                try:
                    base = f"http://127.0.0.1:{port}/api/v1"
                    with httpx.Client(base_url=base, timeout=120) as api:
                        _, job = submit_and_wait(api, clip)
                        assert job["status"] == "succeeded", job
                    result = poll_load(base, job["id"])
                finally:
                    server.terminate()
                    server.wait(30)
                print(f"{name}: {result}", flush=True)
                results[name].append(result)
    finally:
        subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(old)])
    first = next(iter(results))
    for name, runs in results.items():
        ratios = [
            r["requests_per_s"] / b["requests_per_s"]
            for r, b in zip(runs, results[first], strict=True)
        ]
        print(f"{name}: requests/s ratio to {first}: {[round(x, 2) for x in ratios]}")
    (OUT / "polling-results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
