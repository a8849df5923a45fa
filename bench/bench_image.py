"""The container image (``make bench``): how long the test base image (debootstrap) and the
stemify image take to build from nothing, how long a rebuild takes after a change to the
source only (the dependency layers cached), and how big the image is. Same build as the
tests (tests/support/containers.py), under tags of its own; the tests' cached images are
left alone.

    python bench/bench_image.py          # writes bench/out/image.json
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from support.containers import BUILD_INPUTS, ROOT, base_image, build, podman, test_release

BASE = "localhost/stemify-bench-base:bookworm-minbase"
IMAGE = "localhost/stemify-bench:latest"


def size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def main() -> None:
    podman("rmi", "-f", IMAGE, BASE, check=False)
    started = time.monotonic()
    base_image(BASE)
    base_s = time.monotonic() - started
    release = test_release()
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        for name in BUILD_INPUTS:
            shutil.copy(ROOT / name, context / name)
        shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__"))
        cold = build(IMAGE, BASE, release, "--no-cache", context=context)
        # A source change: the layers from `COPY src` on are rebuilt, the dependencies are not.
        with (context / "src" / "stemify" / "__init__.py").open("a") as file:
            file.write("\n# bench_image\n")
        warm = build(IMAGE, BASE, release, context=context)
    results = {
        "base_image_s": round(base_s, 1),
        "base_image_mb": round(size_mb(BASE), 1),
        "image_cold_build_s": round(cold.seconds, 1),
        "image_rebuild_after_source_change_s": round(warm.seconds, 1),
        "image_mb": round(size_mb(IMAGE), 1),
    }
    podman("rmi", "-f", IMAGE, BASE, check=False)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "image.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
