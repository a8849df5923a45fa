"""A model release host on 127.0.0.1 for first-run tests: serves a random-weight model (Range
requests honoured, optionally throttled so a download lasts a while), and the
``STEMIFY_MODEL_CATALOGUE`` file whose checksum matches it."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from stemify.testing.random_models import SOURCES, TINY_KWARGS, build_htdemucs, save_model

MODEL_NAME = "tinyremote"


class ModelServer:
    """Serves ``files`` (URL path -> bytes); ``bytes_per_s`` throttles every body."""

    def __init__(self, files: dict[str, bytes], bytes_per_s: int | None = None) -> None:
        self.files = files
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = outer.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match[1]) if match else 0
                self.send_response(206 if match else 200)
                self.send_header("Content-Length", str(len(data) - start))
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                step = 16384
                for offset in range(start, len(data), step):
                    self.wfile.write(data[offset : offset + step])
                    if bytes_per_s:
                        time.sleep(step / bytes_per_s)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def publish_model(
    tmp: Path, *, corrupt: bool = False, bytes_per_s: int | None = None
) -> tuple[ModelServer, Path, bytes]:
    """A random tiny model on a local server and the catalogue file listing it under
    ``MODEL_NAME``; ``corrupt`` serves other bytes than the checksum says."""
    weights = save_model(build_htdemucs(11, **TINY_KWARGS), tmp / "release", "cccc0001")
    data = weights.read_bytes()
    url_path = f"test_release/{weights.name}"
    served = data[:-1] + bytes([data[-1] ^ 0xFF]) if corrupt else data
    server = ModelServer({url_path: served}, bytes_per_s)
    catalogue = tmp / "catalogue.yaml"
    entry = {
        "description": "random weights",
        "sources": SOURCES,
        "files": [
            {
                "name": weights.name,
                "url_path": url_path,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        ],
    }
    catalogue.write_text(yaml.safe_dump({MODEL_NAME: entry}))
    return server, catalogue, data
