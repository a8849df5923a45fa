"""Storage benchmarks (``make bench``): local directory vs S3 (a SeaweedFS started here on
127.0.0.1, the tests' own `weed mini`), in one run.

1. Upload: a 300 MB WAV through `stemify serve` (API only: Redis, no worker), its throughput
   and the API process's peak RSS (VmHWM) over idle.
2. After the last forward pass of a 4-stem 10-minute job: the engine's StemWriter encoding
   four 10-minute stems (16-bit WAV, as a job does) and the runner's storing stage
   (``storage.put_file(key, path, move=True)`` per stem), timed in this process against each
   backend. Separating 10 minutes with even the tiny model takes minutes a backend on a
   shared 2-core machine, so the whole job runs on a short clip (``--job-minutes``, 1) as a
   cross-check, its own ``stage_seconds`` reported.

    python bench/bench_storage.py            # writes bench/out/storage.json
    python bench/bench_storage.py --quick    # 60 MB, 1-minute stems, no whole job
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from bench_engine import OUT, make_clip
from support.processes import Cluster, client, redis_server, submit, wait_for
from support.s3 import boto3_env, seaweedfs
from support.uploads import peak_rss_kib, upload_wav

from stemify.testing.random_models import make_tiny_repo


def backends(tmp: Path, weed: Any) -> dict[str, dict[str, str]]:
    weed.admin.create_bucket(Bucket="bench")
    return {
        "local": {"STEMIFY_STORAGE_URL": str(tmp / "local-storage")},
        "s3": {"STEMIFY_STORAGE_URL": "s3://bench/stemify", **boto3_env(weed, tmp)},
    }


def bench_upload(tmp: Path, models: Path, storage: dict[str, str], size: int) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    with redis_server() as redis_url:
        cluster = Cluster(
            tmp,
            {
                "STEMIFY_DATA_DIR": str(tmp / "api-data"),
                "STEMIFY_MODEL_DIR": str(models),
                "STEMIFY_DEFAULT_MODEL": "tiny",
                "STEMIFY_REDIS_URL": redis_url,
                "STEMIFY_SECRET_KEY": "bench",
                **storage,
            },
        )
        try:
            serve = cluster.serve()
            upload_wav(cluster.base, 44100 * 4)  # every code path of an upload once
            idle = peak_rss_kib(serve.pid)
            started = time.perf_counter()
            job = upload_wav(cluster.base, size)
            seconds = time.perf_counter() - started
            peak = peak_rss_kib(serve.pid)
            client(cluster.base).delete(f"/jobs/{job['id']}")
        finally:
            cluster.stop()
    return {
        "upload_mb": size / 1e6,
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / 1e6 / seconds, 1),
        "api_idle_rss_mib": round(idle / 1024, 1),
        "api_peak_rss_mib": round(peak / 1024, 1),
        "api_rss_growth_mib": round((peak - idle) / 1024, 1),
    }


def bench_store(tmp: Path, models: Path, storage: dict[str, str], clip: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(
        tmp,
        {
            "STEMIFY_DATA_DIR": str(tmp / "embedded-data"),
            "STEMIFY_MODEL_DIR": str(models),
            "STEMIFY_DEFAULT_MODEL": "tiny",
            **storage,
        },
    )
    try:
        cluster.serve()
        api = client(cluster.base)
        job = wait_for(api, submit(api, clip, shifts="0")["id"], timeout=3600)
        if job["status"] != "succeeded":
            raise SystemExit(f"the job did not succeed: {job}\n{cluster.logs()}")
    finally:
        cluster.stop()
    stages = job["stage_seconds"]
    return {
        "stems": len(job["stems"]),
        "stems_mb": round(sum(s["size"] for s in job["stems"]) / 1e6, 1),
        "encoding_s": round(stages.get("encoding", 0.0), 2),
        "storing_s": round(stages["storing"], 2),
        "after_last_forward_pass_s": round(stages.get("encoding", 0.0) + stages["storing"], 2),
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
    }


def bench_stage(tmp: Path, storage: dict[str, str], minutes: float) -> dict[str, Any]:
    """Encode four stems of ``minutes`` with the engine's writer, then store them as the
    runner does; seconds of each."""
    import numpy as np

    from stemify.audio.encode import OutputFormat, StemWriter
    from stemify.storage import storage_from_url

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in storage.items() if k.startswith("AWS_")})
    try:
        backend = storage_from_url(storage["STEMIFY_STORAGE_URL"])
        rate, frames = 44100, int(minutes * 60 * 44100)
        block = (0.1 * np.sin(np.linspace(0, 2000 * np.pi, 1 << 16))).astype(np.float32)
        block = np.stack([block, -block])
        started = time.perf_counter()
        paths = []
        for name in ("vocals", "drums", "bass", "other"):
            with StemWriter(
                tmp / "stems" / f"{name}.wav", samplerate=rate, channels=2, fmt=OutputFormat()
            ) as writer:
                for _ in range(frames // block.shape[1]):
                    writer.write(block)
                writer.finish()
                paths.append(writer.commit())
        encoding = time.perf_counter() - started
        size = sum(p.stat().st_size for p in paths)
        started = time.perf_counter()
        for path in paths:
            backend.put_file(f"jobs/bench/stems/{path.name}", path, move=True)
        storing = time.perf_counter() - started
        backend.delete_prefix("jobs/bench")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {
        "stem_minutes": minutes,
        "stems_mb": round(size / 1e6, 1),
        "encoding_s": round(encoding, 2),
        "storing_s": round(storing, 2),
        "storing_mb_per_s": round(size / 1e6 / max(storing, 1e-3), 1),
        "after_last_forward_pass_s": round(encoding + storing, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--job-minutes", type=float, default=1.0)
    args = parser.parse_args()
    size = 60 * 10**6 if args.quick else 300 * 10**6
    minutes = 1 if args.quick else 10
    OUT.mkdir(exist_ok=True)
    results: dict[str, Any] = {"upload": {}, "stage": {}, "job": {}}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stemify-bench-")))
        weed = stack.enter_context(seaweedfs(tmp / "seaweedfs"))
        models = tmp / "models"
        models.mkdir()
        make_tiny_repo(models)
        clip = make_clip(OUT / f"clip-{args.job_minutes:g}min.wav", args.job_minutes * 60.0)
        for name, storage in backends(tmp, weed).items():
            results["upload"][name] = bench_upload(tmp / f"up-{name}", models, storage, size)
            print(name, "upload", results["upload"][name], flush=True)
            stage_dir = tmp / f"stage-{name}"
            stage_dir.mkdir()
            results["stage"][name] = bench_stage(stage_dir, storage, minutes)
            print(name, "stage", results["stage"][name], flush=True)
            if not args.quick:
                results["job"][name] = bench_store(tmp / f"job-{name}", models, storage, clip)
                print(name, "job", results["job"][name], flush=True)
    results["machine"] = {"cpus": os.cpu_count()}
    (OUT / "storage.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
