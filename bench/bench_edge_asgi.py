"""Where a request's time goes, without the network: the real app (built as ``stemify serve``
builds it: logging, multiprocess metrics, services, ``create_app``) called as an ASGI app
in-process, ``--concurrency`` requests at a time, against a bare FastAPI app with one plain
``def`` route returning the same JSON. For layers whose cost is below wrk's noise.

    python bench/bench_edge_asgi.py [--requests 3000] [--concurrency 1] [--rounds 3]
        [--variant NAME=SRC_DIR[,VAR=VALUE...]]... [--path job|health]
        [--instructions | --profile]

Default: CPU time per request (user + system of the process, best of the rounds).
``--instructions``: instructions per request, counted by ``valgrind --tool=cachegrind`` as
the difference between a run of 100 and one of 600 requests (start-up cancels out). The
count does not move with the load of the machine, so it compares variants on a busy one;
it misses what happens in the kernel (thread wake-ups), so thread hops look cheaper than
they are under load. About two minutes per variant. ``--profile``: one pyinstrument run
per variant, written to bench/out/edge-logs/asgi-NAME.txt.

Each variant runs in its own child with PYTHONPATH=SRC_DIR (default: this tree) on a fresh
temporary data dir with one succeeded job (``bench_edge.seed``); its log lines go to
bench/out/edge-logs/asgi-NAME.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_edge import OUT, REPO, Variant, bare_app, child_env, parse_variant, seed

SHORT, LONG = 100, 600  # requests of the two counted runs (--instructions)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(app: Any, path: str, requests: int, concurrency: int) -> dict[str, float]:
    async def one() -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"),
                        (b"accept", b"*/*")],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
            "state": {},
        }  # fmt: skip
        status = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    for _ in range(50):  # warm up: imports, caches, connections
        assert await one() == 200
    left = requests

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status = await one()
            assert status == 200, status

    cpu, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return {"cpu_us_per_request": 1e6 * cpu / requests, "requests_per_s": requests / wall}


def child(data: Path, path: str, requests: int, concurrency: int) -> None:
    seeded = json.loads((data / "seed.json").read_text())
    target = f"/api/v1/jobs/{seeded['id']}" if path == "job" else "/api/v1/health"
    if os.environ.get("BENCH_BARE"):
        app = bare_app(seeded["json"])
        services = None
    else:
        from stemify.api.app import create_app
        from stemify.observability.setup import start_process
        from stemify.services import build_services
        from stemify.settings import Settings

        settings = Settings()
        services = build_services(settings, start_process(settings))
        app = create_app(services, auth_required=False)
    result = asyncio.run(drive(app, target, requests, concurrency))
    if services is not None:
        services.close()
    print(json.dumps(result), file=sys.__stdout__, flush=True)


def run_child(variant: Variant, args: argparse.Namespace, requests: int, log: Path) -> Any:
    assert variant.data is not None
    command = [sys.executable]
    if args.profile:
        command += ["-m", "pyinstrument", "--show-all", "-o", str(log.with_suffix(".txt"))]
    if args.instructions:
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                   "--cachegrind-out-file=/dev/null", *command]  # fmt: skip
    command += [__file__, "--child", str(variant.data), args.path,
                str(requests), str(args.concurrency)]  # fmt: skip
    with log.open("wb") as sink:
        run = subprocess.run(
            command, env=child_env(variant), stdout=subprocess.PIPE, stderr=sink, check=True,
            cwd=OUT, timeout=1800,
        )  # fmt: skip
    result = json.loads(run.stdout.decode().strip().splitlines()[-1])
    if args.instructions:
        found = re.search(r"I\s+refs:\s+([\d,]+)", log.read_text(errors="replace"))
        assert found, f"no instruction count in {log}"
        result["instructions"] = int(found.group(1).replace(",", ""))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", choices=["job", "health"], default="job")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--instructions", action="store_true", help="valgrind counts, one round")
    mode.add_argument("--profile", action="store_true", help="pyinstrument, one round")
    args = parser.parse_args()
    # A SIGTERM ends the run through the finally blocks: no server or temp dir left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    variants: list[Variant] = args.variant or [Variant("this tree", REPO / "src")]
    variants.insert(0, Variant("bare", variants[0].src, {"BENCH_BARE": "1"}))
    logs = OUT / "edge-logs"
    logs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="stemify-bench-asgi-"))
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    rounds = 1 if args.profile or args.instructions else args.rounds
    try:
        for i, variant in enumerate(variants):
            variant.data = scratch / f"data{i}"
            variant.data.mkdir()
            subprocess.run(
                [sys.executable, __file__, "--seed", str(variant.data)],
                env=child_env(variant), check=True, cwd=OUT,
            )  # fmt: skip
        for round_ in range(1, rounds + 1):
            for variant in variants:
                log = logs / f"asgi-{re.sub(r'[^A-Za-z0-9]+', '-', variant.name)}.log"
                if args.instructions:
                    short = run_child(variant, args, SHORT, log)
                    result = run_child(variant, args, LONG, log)
                    result["instructions_per_request"] = (
                        result["instructions"] - short["instructions"]
                    ) / (LONG - SHORT)
                    line = f"{result['instructions_per_request'] / 1e6:6.2f} M instructions/request"
                else:
                    result = run_child(variant, args, args.requests, log)
                    line = (
                        f"{result['cpu_us_per_request']:7.0f} us CPU/request  "
                        f"{result['requests_per_s']:6.0f} req/s"
                    )
                results[variant.name].append(result)
                print(f"round {round_} {variant.name:28} {line}", flush=True)
        if not args.instructions:
            print()
            for name, runs in results.items():
                cpu = [round(r["cpu_us_per_request"]) for r in runs]
                print(f"{name:28} best {min(cpu):6.0f} us CPU/request  all {cpu}")
        (OUT / "edge-asgi-results.json").write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seed"]:
        directory = Path(sys.argv[2])
        seed(directory, directory / "seed.json")
    elif sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
