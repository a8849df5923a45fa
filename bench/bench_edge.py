"""The cost of one request: status polling on the real app against a bare FastAPI route, side
by side in one run, so the ratio is not at the mercy of a noisy machine.

    python bench/bench_edge.py [--rounds 3] [--duration 10] [--health]
        [--variant NAME=SRC_DIR[,VAR=VALUE...]]...

Each variant is the real embedded app exactly as ``stemify serve`` runs it (the console
script, so the same uvicorn settings: ``log_config=None, access_log=False,
proxy_headers=False``), run with PYTHONPATH=SRC_DIR (another tree's ``src``, e.g. from ``git
archive COMMIT src | tar -x -C DIR``; default: this tree) and the extra environment given,
on a temporary STEMIFY_DATA_DIR holding one succeeded job with four stems and a quality
report, written straight into the store. ``bare`` is a FastAPI app with one plain ``def``
route returning that same job's JSON as a dict, under the same uvicorn settings. Every
server is its own subprocess on a free 127.0.0.1 port; ``wrk -t2 -c50 -d10s --latency``
(Debian's ``wrk``) runs against each in turn, round after round.

Printed per round: requests/s, p50, p99, server CPU per request (user + system time of the
server process over the run, divided by the requests: the figure least disturbed by wrk
sharing the cores) and the ratio to ``bare``. Raw figures: bench/out/edge-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
JOB_PATH = "/api/v1/jobs/{id}"
HEALTH_PATH = "/api/v1/health"
STEMS = ("vocals", "drums", "bass", "other")
_TICKS = os.sysconf("SC_CLK_TCK")


# ---- the servers (children of this script) ---------------------------------------------------


def seed(data_dir: Path, out: Path) -> None:
    """In a child with the variant's PYTHONPATH: one succeeded job in a fresh store; writes
    {"id": ..., "json": <the job's JSON as the API renders it>} to ``out``."""
    from datetime import UTC, datetime, timedelta

    from stemify.jobs.model import Job, JobSpec, StemFile
    from stemify.jobs.render import job_to_dict
    from stemify.services import build_services
    from stemify.settings import Settings

    settings = Settings(data_dir=data_dir, model_dir=data_dir / "models", default_model="tiny")
    services = build_services(settings)
    job_id = os.urandom(16).hex()
    stems: dict[str, StemFile] = {}
    scratch = data_dir / "scratch.wav"
    scratch.write_bytes(os.urandom(4096))
    for name in STEMS:
        key = f"jobs/{job_id}/stems/{name}.wav"
        stems[name] = StemFile(name, key, services.storage.put_file(key, scratch))
    scratch.unlink()
    now = datetime.now(UTC)
    quality = {
        "stems": {
            n: {"peak_dbfs": -0.8, "rms_dbfs": -17.3, "lufs": -14.2, "clipped_fraction": 0.0}
            for n in STEMS
        },
        "mixture_snr_db": 41.7,
    }
    job = Job(
        id=job_id, spec=JobSpec(model="htdemucs"), source="upload", created_at=now,
        input_name="song.mp3", input_sha256="ab" * 32, input_size=7_340_032,
        input_duration_s=183.4, input_format="mp3",
    )  # fmt: skip
    services.store.add(job)
    assert services.store.claim(job_id, "bench", now, now) is not None
    assert services.store.succeed(
        job_id, "bench", stems=stems, quality=quality, now=now,
        stage_seconds={"decoding": 2.1, "separating": 95.3, "encoding": 3.2, "storing": 0.4},
        expires_at=now + timedelta(days=7),
    )  # fmt: skip
    stored = services.store.get(job_id)
    assert stored is not None
    # The signer: built once in Services (newer trees) or per call (older ones).
    links = services.links if hasattr(services, "links") else services.link_signer()
    body = job_to_dict(stored, links=links)
    services.close()
    out.write_text(json.dumps({"id": job_id, "json": body}))


def bare_app(body: dict[str, Any]) -> Any:
    """The baseline: one plain ``def`` route returning a dict as big as a job's JSON."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/api/v1/jobs/{job_id}")
    def get_job(job_id: str):  # type: ignore[no-untyped-def]
        return body

    @app.get("/api/v1/health")
    def health():  # type: ignore[no-untyped-def]
        return {"status": "ok", "queue": None, "workers": []}

    return app


def serve_bare(port: int, body_file: Path) -> None:
    import uvicorn

    app = bare_app(json.loads(body_file.read_text()))
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, proxy_headers=False
    )


# ---- the driver -----------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    src: Path | None  # None: the bare app
    env: dict[str, str] = field(default_factory=dict)
    data: Path | None = None
    job_id: str = ""
    seeded: Path | None = None  # the job's JSON as this variant's own code renders it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(variant: Variant) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEMIFY_", "PROMETHEUS_"))}
    if variant.src is not None:
        env["PYTHONPATH"] = str(variant.src)
    if variant.data is not None:
        env.update(
            STEMIFY_DATA_DIR=str(variant.data),
            STEMIFY_MODEL_DIR=str(variant.data / "models"),
            STEMIFY_AUTH="off",
            STEMIFY_LOG_FORMAT="json",  # what a service writes to its journal
            STEMIFY_AUTO_PULL="0",  # no model is needed to read a job (and nothing leaves loopback)
        )
    env.update(variant.env)
    return env


def start(variant: Variant, port: int, body_file: Path, log: Path) -> subprocess.Popen[bytes]:
    if variant.src is None:
        command = [sys.executable, __file__, "--bare-server", str(port), str(body_file)]
    else:
        stemify = str(Path(sys.executable).with_name("stemify"))
        command = [stemify, "serve", "--port", str(port)]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, env=child_env(variant), stdout=sink, stderr=subprocess.STDOUT, cwd=OUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{variant.name} exited at start; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {HEALTH_PATH} HTTP/1.0\r\n\r\n".encode())
                if s.recv(16).startswith(b"HTTP/1.1 200"):
                    return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{variant.name} did not answer within 60 s; see {log}")


def check(variant: Variant, port: int, body_file: Path) -> None:
    """The variant answers the job's JSON (as the seed rendered it): a faster variant that
    answered something else would prove nothing."""
    url = f"http://127.0.0.1:{port}{JOB_PATH.format(id=variant.job_id or 'x')}"
    with urllib.request.urlopen(url, timeout=10) as response:
        got = json.loads(response.read())
    # A tree answers what its own renderer makes of its seeded job (trees differ in fields).
    expected = json.loads((variant.seeded or body_file).read_text())
    expected = expected.get("json", expected)
    if variant.src is not None:  # every variant has its own seed: its own job id
        got = json.loads(json.dumps(got).replace(variant.job_id, expected["id"]))
    # Each variant has its own seed (times) and secret (signatures).
    strip = re.compile(r"expires=\d+&sig=[\w-]+|\d{4}-\d\d-\d\dT[\d:.]+Z")
    same = [strip.sub("", json.dumps(body, sort_keys=True)) for body in (got, expected)]
    if same[0] != same[1]:
        raise SystemExit(f"{variant.name} answers another JSON than the job's: {got}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, args: argparse.Namespace, pid: int) -> dict[str, float]:
    before = cpu_seconds(pid)
    run = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
         "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, check=True, timeout=args.duration + 60,
    )  # fmt: skip
    cpu = cpu_seconds(pid) - before
    out = run.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)[ \t]*$", out, re.M))
    if "99" not in latency:
        raise SystemExit(f"wrk printed no latency distribution:\n{out}\n{run.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": rate,
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "server_cpu_us_per_request": 1e6 * cpu / max(1, total),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": 0.0 if errors is None else 1.0,
    }


def parse_variant(text: str) -> Variant:
    name, _, rest = text.partition("=")
    src, *pairs = rest.split(",")
    env = dict(pair.split("=", 1) for pair in pairs)
    return Variant(name, Path(src or REPO / "src").resolve(), env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variant", action="append", type=parse_variant, default=[],
        help="NAME=SRC_DIR[,VAR=VALUE...] (default: 'this tree' = ./src)",
    )  # fmt: skip
    parser.add_argument("--health", action="store_true", help="also GET /api/v1/health")
    args = parser.parse_args()
    # A SIGTERM ends the run through the finally blocks: no server or temp dir left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    variants: list[Variant] = args.variant or [Variant("this tree", REPO / "src")]
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "edge-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="stemify-bench-edge-"))
    body_file = scratch / "job.json"
    try:
        for i, variant in enumerate(variants):
            variant.data = scratch / f"data{i}"
            variant.data.mkdir()
            seeded = scratch / f"seed{i}.json"
            subprocess.run(
                [sys.executable, __file__, "--seed", str(variant.data), str(seeded)],
                env=child_env(variant), check=True, cwd=OUT,
            )  # fmt: skip
            found = json.loads(seeded.read_text())
            variant.job_id, variant.seeded = found["id"], seeded
            if i == 0:
                body_file.write_text(json.dumps(found["json"]))
        size = len(json.dumps(json.loads(body_file.read_text()), separators=(",", ":")))
        print(f"job JSON: {size} bytes; wrk -t{args.threads} -c{args.connections} "
              f"-d{args.duration}s --latency", flush=True)  # fmt: skip
        everyone = [Variant("bare", None), *variants]
        paths = {"job": JOB_PATH} | ({"health": HEALTH_PATH} if args.health else {})
        results: dict[str, dict[str, list[dict[str, float]]]] = {
            p: {v.name: [] for v in everyone} for p in paths
        }
        for round_ in range(1, args.rounds + 1):
            for variant in everyone:
                port = free_port()
                log = logs / f"{re.sub(r'[^A-Za-z0-9]+', '-', variant.name)}.log"
                server = start(variant, port, body_file, log)
                try:
                    if round_ == 1:
                        check(variant, port, body_file)
                    for what, path in paths.items():
                        url = f"http://127.0.0.1:{port}{path.format(id=variant.job_id or 'x')}"
                        result = wrk(url, args, server.pid)
                        results[what][variant.name].append(result)
                        bare = results[what]["bare"][-1]["requests_per_s"]
                        print(
                            f"round {round_} {what:6} {variant.name:28} "
                            f"{result['requests_per_s']:8.0f} req/s  "
                            f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
                            f"cpu {result['server_cpu_us_per_request']:6.0f} us/req  "
                            f"ratio to bare {result['requests_per_s'] / bare:.2f}"
                            + (f"  NON-2xx {result['non_2xx']:.0f}" if result["non_2xx"] else ""),
                            flush=True,
                        )
                finally:
                    server.terminate()
                    server.wait(30)
        print()
        for what, by_variant in results.items():
            for name, runs in by_variant.items():
                ratios = [
                    r["requests_per_s"] / b["requests_per_s"]
                    for r, b in zip(runs, by_variant["bare"], strict=True)
                ]
                print(
                    f"{what:6} {name:28} req/s {[round(r['requests_per_s']) for r in runs]}  "
                    f"ratio to bare {[round(x, 2) for x in ratios]}"
                )
        (OUT / "edge-results.json").write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seed"]:
        seed(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1:2] == ["--bare-server"]:
        serve_bare(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
