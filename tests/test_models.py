"""Model catalogue, offline loading, verified resumable downloads and the LRU cache.

Downloads go over real HTTP to a local server; models are random-weight demucs checkpoints."""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs
from demucs.states import save_with_checksum

from stemify.errors import ChecksumError, ModelDownloadError, ModelLoadError, ModelNotFoundError
from stemify.models import (
    CatalogueEntry,
    ModelCache,
    ModelFile,
    list_models,
    load_model,
    local_models,
    model_channels,
    model_nbytes,
    model_samplerate,
    model_sources,
    official_catalogue,
    pull,
    pull_model,
    verify_models,
)
from stemify.testing.random_models import SOURCES, TINY_KWARGS, build_htdemucs, save_model

pytestmark = pytest.mark.unit

OFFICIAL = [
    "htdemucs",
    "htdemucs_ft",
    "htdemucs_6s",
    "hdemucs_mmi",
    "mdx",
    "mdx_extra",
    "mdx_q",
    "mdx_extra_q",
]

# ---------------------------------------------------------------------------------------------
# A small HTTP file server with Range support, one-shot connection cuts and a request log.


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    # path -> bytes of body to send before dropping the connection (consumed by one request)
    cut_after: dict[str, int] = field(default_factory=dict)
    honor_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    body_bytes: dict[str, int] = field(default_factory=dict)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        self.state.requests.append((path, range_header))
        data = self.state.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and self.state.honor_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = self.state.cut_after.pop(path, None)
        sent = body if cut is None else body[:cut]
        self.wfile.write(sent)
        self.wfile.flush()
        self.state.body_bytes[path] = self.state.body_bytes.get(path, 0) + len(sent)
        self.close_connection = True


@dataclass
class FileServer:
    state: ServerState
    base_url: str


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield FileServer(state, f"http://127.0.0.1:{httpd.server_address[1]}/models/")
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class RemoteModel:
    entry: CatalogueEntry
    data: bytes
    url_path: str


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory: pytest.TempPathFactory) -> RemoteModel:
    """A random tiny model published like an official one (``root/<sig>-<sha8>.th``)."""
    source_dir = tmp_path_factory.mktemp("remote")
    path = save_model(build_htdemucs(7, **TINY_KWARGS), source_dir, "bbbb0001")
    data = path.read_bytes()
    url_path = f"hybrid_test/{path.name}"
    model_file = ModelFile(
        name=path.name, url_path=url_path, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    entry = CatalogueEntry(
        name="tinyremote",
        description="test model",
        sources=tuple(SOURCES),
        files=(model_file,),
        bag_yaml="models: ['bbbb0001']\n",
        needs_diffq=False,
    )
    return RemoteModel(entry, data, url_path)


def _publish(server: FileServer, remote: RemoteModel, data: bytes | None = None) -> None:
    server.state.files[f"models/{remote.url_path}"] = remote.data if data is None else data


def _flip_byte(path: Path, position: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if position is None else position
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


# Socket connections opened by this process while `_connects` is being recorded.
_connects: list[object] = []
_recording = threading.Event()


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect" and _recording.is_set():
        _connects.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture
def no_network() -> Iterator[list[object]]:
    _connects.clear()
    _recording.set()
    try:
        yield _connects
    finally:
        _recording.clear()


# ---------------------------------------------------------------------------------------------
# Catalogue


def test_official_catalogue_matches_demucs_remote_files() -> None:
    catalogue = official_catalogue()
    assert list(catalogue) == OFFICIAL
    for entry in catalogue.values():
        assert entry.description
        for f in entry.files:
            sig, name_hash = f.name.removesuffix(".th").split("-")
            assert f.url_path.endswith(f"/{f.name}")
            assert "://" not in f.url_path
            # A published full hash must extend the prefix demucs encoded in the name.
            assert f.sha256.startswith(name_hash)
            assert len(f.sha256) in (8, 64)
            assert f.signature == sig
        assert yaml.safe_load(entry.bag_yaml)["models"] == [f.signature for f in entry.files]

    htdemucs = catalogue["htdemucs"]
    assert htdemucs.sources == ("drums", "bass", "other", "vocals")
    assert htdemucs.files[0].url_path == "hybrid_transformer/955717e8-8726e21a.th"
    assert htdemucs.files[0].size == 84_141_911
    assert [f.size for f in catalogue["htdemucs_ft"].files] == [84_141_271] * 4
    assert catalogue["htdemucs_6s"].sources == (
        "drums",
        "bass",
        "other",
        "vocals",
        "guitar",
        "piano",
    )
    assert catalogue["mdx"].files[0].url_path.startswith("mdx_final/")
    assert catalogue["mdx_q"].needs_diffq and catalogue["mdx_extra_q"].needs_diffq
    assert not catalogue["htdemucs"].needs_diffq
    # Nothing published for mdx_q: only the prefix demucs itself checks, size unknown.
    assert all(len(f.sha256) == 8 and f.size is None for f in catalogue["mdx_q"].files)
    assert catalogue["mdx_q"].size_bytes is None


def test_list_models_empty_dir(tmp_path: Path) -> None:
    statuses = list_models(tmp_path / "does-not-exist")
    assert [s.name for s in statuses] == OFFICIAL
    assert all(s.official and not s.installed for s in statuses)
    by_name = {s.name: s for s in statuses}
    assert by_name["htdemucs"].size_bytes == 84_141_911
    assert by_name["mdx_q"].size_bytes is None
    assert local_models(tmp_path) == []


def test_list_models_local_dir(model_dir: Path) -> None:
    assert local_models(model_dir) == ["tiny", "tiny6", "tinybag"]
    by_name = {s.name: s for s in list_models(model_dir)}
    assert not by_name["htdemucs"].installed
    tiny6 = by_name["tiny6"]
    assert tiny6.installed and not tiny6.official
    assert tiny6.sources == (*SOURCES, "guitar", "piano")
    assert tiny6.size_bytes == next(model_dir.glob("aaaa0003-*.th")).stat().st_size
    tinybag = by_name["tinybag"]
    assert tinybag.sources == tuple(SOURCES)
    expected = sum(
        next(model_dir.glob(f"{s}-*.th")).stat().st_size for s in ("aaaa0001", "aaaa0002")
    )
    assert tinybag.size_bytes == expected


def test_list_models_incomplete_local_bag(tmp_path: Path, model_dir: Path) -> None:
    shutil.copy(model_dir / "tinybag.yaml", tmp_path)
    shutil.copy(next(model_dir.glob("aaaa0001-*.th")), tmp_path)
    (status,) = [s for s in list_models(tmp_path) if s.name == "tinybag"]
    assert not status.installed and status.size_bytes is None


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize(
    ("name", "sources"),
    [("tiny", SOURCES), ("tinybag", SOURCES), ("tiny6", [*SOURCES, "guitar", "piano"])],
)
def test_load_model_from_dir(
    model_dir: Path, name: str, sources: list[str], no_network: list[object]
) -> None:
    model = load_model(name, model_dir)
    assert model_sources(model) == sources
    assert model_samplerate(model) == 44100
    assert model_channels(model) == 2
    assert not model.training
    assert no_network == []


def test_load_bare_signature(model_dir: Path) -> None:
    assert model_sources(load_model("aaaa0003", model_dir))[-1] == "piano"


def test_missing_official_model_is_fast_and_offline(
    tmp_path: Path, no_network: list[object]
) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        load_model("htdemucs", tmp_path)
    # demucs' own fallback would spend ~25 s trying the network.
    assert time.monotonic() - started < 1.0
    assert "stemify models pull htdemucs" in info.value.message
    assert str(tmp_path) in info.value.message
    assert info.value.code == "model_not_found"
    assert no_network == []


def test_missing_model_in_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="stemify models pull htdemucs_ft"):
        load_model("htdemucs_ft", tmp_path / "nope")


def test_unknown_model(tmp_path: Path, no_network: list[object]) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'whatever': not an official"):
        load_model("whatever", tmp_path)
    with pytest.raises(ModelNotFoundError, match="invalid model name"):
        load_model("hf://someone/htdemucs", tmp_path)
    with pytest.raises(ModelNotFoundError, match="invalid model name"):
        load_model("../tiny", tmp_path)
    assert no_network == []


def test_partially_installed_official_model(tmp_path: Path, no_network: list[object]) -> None:
    entry = official_catalogue()["htdemucs_ft"]
    (tmp_path / "htdemucs_ft.yaml").write_text(entry.bag_yaml)
    with pytest.raises(ModelNotFoundError, match="missing weights f7e0c4bc") as info:
        load_model("htdemucs_ft", tmp_path)
    assert "stemify models pull htdemucs_ft" in info.value.message
    assert no_network == []


def test_corrupt_weights_raise_load_error(
    tmp_path: Path, model_dir: Path, no_network: list[object]
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_dir, repo)
    _flip_byte(next(repo.glob("aaaa0003-*.th")))
    with pytest.raises(ModelLoadError, match=r"'tiny6'.*corrupt") as info:
        load_model("tiny6", repo)
    assert info.value.code == "model_load_failed"
    assert no_network == []


def test_truncated_official_file_says_pull_again(tmp_path: Path, remote_model: RemoteModel) -> None:
    # Name it like an official file so the message can tell the user what to run.
    entry = official_catalogue()["htdemucs"]
    (tmp_path / "htdemucs.yaml").write_text(entry.bag_yaml)
    (tmp_path / entry.files[0].name).write_bytes(remote_model.data[:1000])
    with pytest.raises(ModelLoadError, match="run `stemify models pull htdemucs` again"):
        load_model("htdemucs", tmp_path)


def test_malformed_bag(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("just: text\n")
    with pytest.raises(ModelLoadError, match="not a demucs bag"):
        load_model("broken", tmp_path)


def _without_diffq(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if diffq were not installed (it is: requirements.lock pins diffq-fixed)."""
    for module in [m for m in sys.modules if m == "diffq" or m.startswith("diffq.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "diffq", None)


def test_quantized_models_need_diffq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without_diffq(monkeypatch)
    for name in ("mdx_q", "mdx_extra_q"):
        with pytest.raises(ModelLoadError, match=r"requires diffq.*pip install diffq"):
            load_model(name, tmp_path)


def test_quantized_local_checkpoint_does_not_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A diffq-quantized state makes demucs call fatal() -> sys.exit when diffq is missing.
    _without_diffq(monkeypatch)
    package = {
        "klass": HTDemucs,
        "args": (),
        "kwargs": {"sources": SOURCES, **TINY_KWARGS},
        "state": {"__quantized": True},
        "training_args": {},
    }
    save_with_checksum(package, tmp_path / "cccc0001.th")
    (tmp_path / "quant.yaml").write_text("models: ['cccc0001']\n")
    with pytest.raises(ModelLoadError, match="pip install diffq"):
        load_model("quant", tmp_path)


# ---------------------------------------------------------------------------------------------
# Pull


def test_pull_installs_a_loadable_model(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    _publish(server, remote_model)
    seen: list[tuple[str, int, int | None]] = []
    downloaded = pull_model(
        remote_model.entry,
        tmp_path,
        server.base_url,
        progress=lambda name, done, total: seen.append((name, done, total)),
    )
    file_name = remote_model.entry.files[0].name
    assert downloaded == [tmp_path / file_name]
    assert (tmp_path / file_name).read_bytes() == remote_model.data
    assert (tmp_path / "tinyremote.yaml").read_text() == remote_model.entry.bag_yaml
    assert not list(tmp_path.glob("*.part"))
    assert seen[0] == (file_name, 0, len(remote_model.data))
    assert seen[-1] == (file_name, len(remote_model.data), len(remote_model.data))

    model = load_model("tinyremote", tmp_path)
    mix = torch.randn(1, 2, 22050)
    stems = apply_model(model, mix, shifts=0, split=True, progress=False, num_workers=0)
    assert stems.shape == (1, 4, 2, 22050)
    assert torch.isfinite(stems).all()
    assert verify_models(tmp_path)[0].ok


def test_pull_skips_files_already_present(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    _publish(server, remote_model)
    assert pull_model(remote_model.entry, tmp_path, server.base_url)
    server.state.requests.clear()
    assert pull_model(remote_model.entry, tmp_path, server.base_url) == []
    assert server.state.requests == []


def test_pull_replaces_a_corrupt_installed_file(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    _publish(server, remote_model)
    final = tmp_path / remote_model.entry.files[0].name
    final.write_bytes(remote_model.data)
    _flip_byte(final)
    assert pull_model(remote_model.entry, tmp_path, server.base_url) == [final]
    assert final.read_bytes() == remote_model.data


def test_pull_corrupt_download_is_deleted(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    corrupt = bytearray(remote_model.data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    _publish(server, remote_model, bytes(corrupt))
    with pytest.raises(ChecksumError) as info:
        pull_model(remote_model.entry, tmp_path, server.base_url)
    file_name = remote_model.entry.files[0].name
    assert f"checksum mismatch for {file_name}" in info.value.message
    assert "the download was deleted" in info.value.message
    assert info.value.code == "checksum_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_pull_resumes_a_cut_download(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    _publish(server, remote_model)
    path = f"models/{remote_model.url_path}"
    half = len(remote_model.data) // 2
    server.state.cut_after[path] = half
    file_name = remote_model.entry.files[0].name
    part = tmp_path / f"{file_name}.part"

    with pytest.raises(ModelDownloadError, match="run the command again to resume"):
        pull_model(remote_model.entry, tmp_path, server.base_url)
    assert part.stat().st_size == half
    assert not (tmp_path / file_name).exists()
    assert not (tmp_path / "tinyremote.yaml").exists()

    server.state.requests.clear()
    server.state.body_bytes.clear()
    assert pull_model(remote_model.entry, tmp_path, server.base_url) == [tmp_path / file_name]
    assert server.state.requests == [(path, f"bytes={half}-")]
    assert server.state.body_bytes[path] == len(remote_model.data) - half
    assert (tmp_path / file_name).read_bytes() == remote_model.data
    assert not part.exists()
    load_model("tinyremote", tmp_path)


def test_pull_restarts_when_server_ignores_range(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    _publish(server, remote_model)
    server.state.honor_range = False
    file_name = remote_model.entry.files[0].name
    # A stale .part with wrong bytes: appending to it would corrupt the file.
    (tmp_path / f"{file_name}.part").write_bytes(b"x" * 100)
    assert pull_model(remote_model.entry, tmp_path, server.base_url)
    assert (tmp_path / file_name).read_bytes() == remote_model.data


def test_pull_complete_part_gets_416(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    _publish(server, remote_model)
    file_name = remote_model.entry.files[0].name
    (tmp_path / f"{file_name}.part").write_bytes(remote_model.data)
    assert pull_model(remote_model.entry, tmp_path, server.base_url) == [tmp_path / file_name]
    assert (tmp_path / file_name).read_bytes() == remote_model.data


def test_pull_network_errors(tmp_path: Path, remote_model: RemoteModel) -> None:
    with pytest.raises(ModelDownloadError, match="ConnectError"):
        pull_model(remote_model.entry, tmp_path, "http://127.0.0.1:9/")


def test_pull_http_error(tmp_path: Path, server: FileServer, remote_model: RemoteModel) -> None:
    with pytest.raises(ModelDownloadError, match="HTTP 404"):
        pull_model(remote_model.entry, tmp_path, server.base_url)


def test_pull_by_name_with_injected_catalogue(
    tmp_path: Path, server: FileServer, remote_model: RemoteModel
) -> None:
    _publish(server, remote_model)
    catalogue = {"tinyremote": remote_model.entry}
    with httpx.Client(timeout=5) as client:
        paths = pull(["tinyremote"], tmp_path, server.base_url, catalogue=catalogue, client=client)
        assert not client.is_closed
    assert [p.name for p in paths] == [remote_model.entry.files[0].name]
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        pull(["nope"], tmp_path, server.base_url, catalogue=catalogue)


# ---------------------------------------------------------------------------------------------
# Verify


def test_verify_models(tmp_path: Path, model_dir: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_dir, repo)
    assert all(r.ok for r in verify_models(repo))

    _flip_byte(next(repo.glob("aaaa0003-*.th")))
    next(repo.glob("aaaa0002-*.th")).unlink()
    bad = {(r.name, r.ok) for r in verify_models(repo) if not r.ok}
    assert bad == {("tiny6", False), ("tinybag", False)}
    messages = {r.name: r.message for r in verify_models(repo) if not r.ok}
    assert messages["tiny6"].startswith("checksum mismatch")
    assert messages["tinybag"] == "missing"


def test_verify_official_file_against_full_hash(tmp_path: Path) -> None:
    entry = official_catalogue()["htdemucs"]
    (tmp_path / "htdemucs.yaml").write_text(entry.bag_yaml)
    (tmp_path / entry.files[0].name).write_bytes(b"not the model")
    (result,) = verify_models(tmp_path)
    assert result.name == "htdemucs" and not result.ok
    # Compared with the full published hash, not just the 8 hex in the name.
    assert entry.files[0].sha256 in result.message


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_returns_same_object_and_loads_once_under_concurrency(model_dir: Path) -> None:
    calls: list[str] = []

    def slow_load(name: str) -> Any:
        calls.append(name)
        time.sleep(0.2)
        return load_model(name, model_dir)

    cache = ModelCache(slow_load, budget_bytes=1 << 30)
    barrier = threading.Barrier(8)

    def get(_: int) -> Any:
        barrier.wait()
        return cache.get("tiny")

    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(get, range(8)))
    assert calls == ["tiny"]
    assert all(m is models[0] for m in models)
    assert cache.get("tiny") is models[0]
    assert cache.stats.loads == 1
    assert cache.stats.bytes == model_nbytes(models[0]) > 0


def test_cache_with_real_loader(model_dir: Path) -> None:
    cache = ModelCache(partial(load_model, model_dir=model_dir), budget_bytes=1 << 30)
    assert model_sources(cache.get("tiny6"))[-1] == "piano"
    with pytest.raises(ModelNotFoundError):
        cache.get("htdemucs")
    # A failed load is not cached: the next call tries again and fails the same way.
    with pytest.raises(ModelNotFoundError):
        cache.get("htdemucs")
    assert cache.loaded() == ["tiny6"]


def test_cache_lru_eviction_and_stats() -> None:
    sizes = {"a": 1000, "b": 1000, "c": 1000, "huge": 5000}

    def load(name: str) -> torch.nn.Module:
        return torch.nn.Linear(sizes[name], 1, bias=False)  # 4 bytes per weight

    cache = ModelCache(load, budget_bytes=8000)
    a = cache.get("a")
    cache.get("b")
    assert cache.loaded() == ["a", "b"]
    assert cache.get("a") is a  # a is now the most recently used
    cache.get("c")  # 12000 > 8000: drops b, the least recently used
    assert cache.loaded() == ["a", "c"]
    assert cache.stats.evictions == 1
    assert cache.stats.bytes == 8000

    cache.get("huge")  # over budget alone, still kept
    assert cache.loaded() == ["huge"]
    assert cache.stats.loads == 4
    assert cache.stats.evictions == 3

    assert cache.evict("huge") and not cache.evict("huge")
    assert cache.loaded() == [] and cache.stats.bytes == 0
    assert cache.get("a") is not a  # evicted models are loaded again
    assert cache.stats.loads == 5
