"""Job-service benchmarks (``make bench``): job overhead, status polling, dedup-hit latency.

All traffic goes to a `stemify serve` started here on 127.0.0.1 (embedded mode: SQLite, local
storage, in-process worker), with the released-size random-weight htdemucs preloaded.

    python bench/bench_service.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import OUT, build_models, make_clip, run_child

POLLERS = 50
POLL_SECONDS = 10.0


def start_server(models: Path, data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STEMIFY_MODEL_DIR": str(models),
        "STEMIFY_DATA_DIR": str(data),
        "STEMIFY_DEFAULT_MODEL": "released",
        "STEMIFY_PRELOAD_MODELS": "released",
    }
    stemify = str(Path(sys.executable).with_name("stemify"))
    log = (OUT / "serve.log").open("wb")
    process = subprocess.Popen(
        [stemify, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/api/v1/ready", timeout=2).json()
            if ready["workers"]:
                return process
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("stemify serve did not become ready; see bench/out/serve.log")


def submit_and_wait(api: httpx.Client, clip: Path) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    with clip.open("rb") as file:
        job = api.post("/jobs", files={"file": (clip.name, file)}, data={"shifts": "1"}).json()
    while job["status"] in ("queued", "running"):
        time.sleep(0.1)  # a brisk client; faster polling would only steal the worker's cores
        job = api.get(f"/jobs/{job['id']}").json()
    return time.perf_counter() - started, job


def poll_load(base: str, job_id: str) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + POLL_SECONDS

    def poller() -> None:
        own: list[float] = []
        with httpx.Client(base_url=base, timeout=10) as api:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                assert api.get(f"/jobs/{job_id}").status_code == 200
                own.append(time.perf_counter() - started)
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=poller) for _ in range(POLLERS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "clients": POLLERS,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    work = OUT / "work"
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    build_models(models)
    clip = make_clip(work / "clip60.wav", 60)

    print("engine alone: separate_file on the 60 s clip, model loaded beforehand")
    engine = run_child("stemify", models, "released", clip)

    data = work / "service-data"
    subprocess.run(["rm", "-rf", str(data)], check=True)
    port = 8765
    server = start_server(models, data, port)
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        with httpx.Client(base_url=base, timeout=60) as api:
            print("job: submit -> succeeded for the same clip through the service")
            job_seconds, job = submit_and_wait(api, clip)
            assert job["status"] == "succeeded", job
            print(f"  {job_seconds:.2f} s")
            print("dedup hit: the same clip again")
            hits = []
            for _ in range(5):
                seconds, again = submit_and_wait(api, clip)
                assert again["cache_hit"], again
                hits.append(seconds)
            print(f"  {[round(h * 1000) for h in hits]} ms")
            print(f"status polling: {POLLERS} clients for {POLL_SECONDS:.0f} s")
            polling = poll_load(base, job["id"])
            print(f"  {polling}")
    finally:
        server.terminate()
        server.wait(30)
    results = {
        "engine_seconds": engine["seconds"],
        "job_seconds": job_seconds,
        "job_overhead_ratio": job_seconds / engine["seconds"],
        "job_stage_seconds": job["stage_seconds"],
        "dedup_hit_ms": {"median": 1000 * statistics.median(hits), "max": 1000 * max(hits)},
        "polling": polling,
    }
    (OUT / "service-results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
