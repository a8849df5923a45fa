"""The HTTP API over a real uvicorn server, a real SQLite store and real local storage.

No worker runs here: submitted jobs stay queued. Finished jobs are made through the store's
own worker path (claim + succeed) with real audio files put into storage."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.live import serve_in_thread

from stemify.api import create_app
from stemify.api.routes_downloads import byte_range
from stemify.api.upload_stream import display_name
from stemify.clock import now_utc
from stemify.jobs.events import LocalEventBus
from stemify.jobs.model import Job, JobSpec, StemFile
from stemify.jobs.store import JobStore
from stemify.keys.store import KeyStore, hash_key
from stemify.queue.transport import LocalQueue
from stemify.services import Services, build_services
from stemify.settings import Settings
from stemify.storage import LocalStorage

pytestmark = pytest.mark.api

MakeAudio = Callable[..., Path]


@dataclass
class Api:
    services: Services
    storage: LocalStorage
    client: httpx.Client  # base URL: http://127.0.0.1:<port>/api/v1
    root: str  # http://127.0.0.1:<port>

    @property
    def store(self) -> JobStore:
        return self.services.store

    @property
    def queue(self) -> LocalQueue:
        assert isinstance(self.services.queue, LocalQueue)
        return self.services.queue

    def leftovers(self) -> list[str]:
        """Every file in storage, temp area included."""
        return sorted(
            p.relative_to(self.storage.root).as_posix()
            for p in self.storage.root.rglob("*")
            if p.is_file()
        )


MakeApi = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path, model_dir: Path) -> Iterator[MakeApi]:
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:

        def make(*, auth_required: bool = False, **overrides: Any) -> Api:
            data_dir = tmp_path / f"api{next(numbers)}"
            data_dir.mkdir()
            settings = Settings(
                **{
                    "model_dir": model_dir,
                    "data_dir": data_dir,
                    "default_model": "tiny",
                    "secret_key": "test-secret",
                    **overrides,
                }
            )
            services = build_services(settings)
            stack.callback(services.close)  # closed last: after the server and the client
            root = stack.enter_context(
                serve_in_thread(create_app(services, auth_required=auth_required))
            )
            client = stack.enter_context(httpx.Client(base_url=f"{root}/api/v1", timeout=20))
            assert isinstance(services.storage, LocalStorage)
            return Api(services, services.storage, client, root)

        yield make


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    return make_api()


@pytest.fixture
def song(make_audio: MakeAudio) -> Path:
    return make_audio("song.wav", seconds=2.0)


def error_of(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Assert the one error shape; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return str(body["error"]["message"])


def upload(
    api: Api,
    path: Path,
    *,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    name: str | None = None,
) -> httpx.Response:
    with path.open("rb") as file:
        return api.client.post(
            "/jobs",
            files={"file": (name or path.name, file, "application/octet-stream")},
            data=data or {},
            headers=headers,
        )


def link(
    api: Api, url: str = "https://example.com/music/song.mp3", **fields: str
) -> httpx.Response:
    return api.client.post(
        "/jobs", files={"url": (None, url), **{k: (None, v) for k, v in fields.items()}}
    )


def stored(api: Api, job_id: str) -> Job:
    job = api.store.get(job_id)
    assert job is not None
    return job


def add_key(keys: KeyStore, key_id: str, *, admin: bool = False) -> str:
    secret = f"secret-{key_id}"
    keys.add(key_id, key_id, hash_key(secret), secret[:8], admin, now_utc())
    return secret


def finished_job(
    api: Api,
    make_audio: MakeAudio,
    *,
    owner: str | None = None,
    input_name: str | None = "My Song.mp3",
) -> tuple[Job, dict[str, bytes]]:
    """A succeeded job with real wav stems in storage, finished through the store's own
    worker path."""
    job_id = os.urandom(16).hex()
    stems: dict[str, StemFile] = {}
    contents: dict[str, bytes] = {}
    for i, name in enumerate(("vocals", "drums")):
        audio = make_audio(f"{job_id}-{name}.wav", seconds=0.5 + i * 0.25)
        key = f"jobs/{job_id}/stems/{name}.wav"
        size = api.storage.put_file(key, audio)
        stems[name] = StemFile(name, key, size)
        contents[name] = audio.read_bytes()
    now = now_utc()
    job = Job(
        id=job_id,
        spec=JobSpec(model="tiny"),
        source="upload",
        created_at=now,
        owner=owner,
        input_name=input_name,
    )
    api.store.add(job)
    assert api.store.claim(job_id, "w1", now, now) is not None
    assert api.store.succeed(
        job_id,
        "w1",
        stems=stems,
        quality=None,
        stage_seconds={"separating": 1.0},
        now=now,
        expires_at=now + timedelta(hours=1),
    )
    stored = api.store.get(job_id)
    assert stored is not None
    return stored, contents


# ---- submitting uploads ---------------------------------------------------------------------


def test_upload_creates_a_queued_job(api: Api, song: Path) -> None:
    response = upload(api, song, data={"model": "tiny", "stems": "vocals,drums"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["model"] == "tiny"
    assert job["params"]["stems"] == ["vocals", "drums"]
    assert job["input"]["source"] == "upload"
    assert job["input"]["name"] == "song.wav"
    assert job["input"]["sha256"] == hashlib.sha256(song.read_bytes()).hexdigest()
    assert job["input"]["size"] == song.stat().st_size
    assert job["input"]["duration_s"] == pytest.approx(2.0, abs=0.05)
    assert job["input"]["format"] == "pcm_s16le"
    assert job["id"] in api.queue.pending()
    key = f"jobs/{job['id']}/input"
    assert api.storage.size(key) == song.stat().st_size
    assert api.client.get(f"/jobs/{job['id']}").json() == job


def test_stemify_alias_and_unsafe_file_names(api: Api, song: Path) -> None:
    # Built by hand: httpx would percent-escape the control character itself.
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="../../etc/\x07pass\u202ewd.wav"\r\n\r\n'
        ).encode()
        + song.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = api.client.post(
        "/stemify",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["input"]["name"] == "passwd.wav"
    assert display_name("C:\\Users\\me\\a.mp3") == "a.mp3"
    assert display_name("x/" + "é" * 300) == "é" * 200
    assert display_name("../..") is None
    assert display_name("\x00\x01") is None


def test_link_creates_a_queued_job(api: Api) -> None:
    response = link(api, "https://example.com/a/b/My%20Track.flac?sig=1")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["input"]["source"] == "url"
    assert job["input"]["url"] == "https://example.com/a/b/My%20Track.flac?sig=1"
    assert job["input"]["name"] == "My Track.flac"
    assert job["input"]["sha256"] is None
    assert job["id"] in api.queue.pending()
    # A plain urlencoded form works for links too.
    response = api.client.post("/jobs", data={"url": "http://example.org/x.mp3"})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("route", ["/jobs", "/stemify"])
def test_youtube_url_is_the_url_field(api: Api, route: str) -> None:
    """The origin document's name for a link, on both submission routes."""
    form = {"youtube_url": (None, "https://example.com/watch/song.mp3"), "shifts": (None, "0")}
    response = api.client.post(route, files=form)
    assert response.status_code == 202, response.text
    assert response.json()["input"]["url"] == "https://example.com/watch/song.mp3"
    both = {**form, "url": (None, "https://example.com/other.mp3")}
    assert "not several" in error_of(api.client.post(route, files=both), 422, "invalid_url")


def test_options_are_judged_once_the_form_is_read(make_api: MakeApi, song: Path) -> None:
    """``-F file=@song.mp3 -F model=tiny`` (the file first, as curl users write it) is judged
    by the model it names, not by a default model that is not installed."""
    api = make_api(default_model="htdemucs")  # not installed
    with song.open("rb") as file:
        parts = [("file", ("song.wav", file.read())), ("model", (None, "tiny"))]
    response = api.client.post("/jobs", files=parts)
    assert response.status_code == 202, response.text
    assert response.json()["model"] == "tiny"
    # With no model named at all, the default one decides, once the form is read.
    with song.open("rb") as file:
        message = error_of(api.client.post("/jobs", files={"file": file}), 422)
    assert "'htdemucs' is not installed" in message
    # An option sent before the file is still refused before the upload is stored.
    before = api.leftovers()
    early = [("shifts", (None, "99")), ("file", ("song.wav", b"\0" * 100))]
    assert "shifts" in error_of(api.client.post("/jobs", files=early), 422)
    assert api.leftovers() == before


def test_neither_or_both_sources_is_400(api: Api, song: Path) -> None:
    assert "file" in error_of(api.client.post("/jobs", data={"model": "tiny"}), 400, "bad_request")
    error_of(api.client.post("/jobs"), 400, "bad_request")
    error_of(
        api.client.post("/jobs", content=b"{}", headers={"content-type": "application/json"}), 400
    )
    message = error_of(upload(api, song, data={"url": "https://example.com/x.mp3"}), 400)
    assert "not both" in message
    # url sent after the file: refused after the upload, which is then removed
    with song.open("rb") as file:
        response = api.client.post(
            "/jobs",
            files=[("file", ("a.wav", file)), ("url", (None, "https://example.com/x.mp3"))],
        )
    error_of(response, 400)
    assert api.leftovers() == []
    assert api.queue.pending() == set()


def test_not_audio_is_415_and_leaves_nothing(api: Api, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(os.urandom(50_000))
    message = error_of(upload(api, junk), 415, "invalid_audio")
    assert message.startswith("the uploaded file ")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    error_of(upload(api, empty), 415, "invalid_audio")
    assert api.leftovers() == []
    assert api.store.list_jobs(owner=None, all_owners=True)[0] == []


def test_upload_over_the_limit_is_413_and_leaves_nothing(make_api: MakeApi) -> None:
    api = make_api(max_upload_mb=1)
    big = os.urandom(2 << 20)
    # An honest Content-Length: refused before the body is read.
    response = api.client.post("/jobs", files={"file": ("big.wav", big)})
    assert "larger than the 1 MB limit" in error_of(response, 413, "too_large")

    # Refused on the header alone: a raw request that promises 1 GB and sends nothing.
    host, port = api.root.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
        )
        assert raw.recv(65536).startswith(b"HTTP/1.1 413 ")

    # Chunked, no Content-Length: refused while streaming, once past 1 MB.
    boundary = "stemifyboundary1234"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = api.client.post(
        "/jobs",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert "larger than the 1 MB limit" in error_of(response, 413, "too_large")
    assert api.leftovers() == []
    # The server is still fine afterwards.
    assert api.client.get("/health").status_code == 200


def test_too_long_is_422_and_leaves_nothing(make_api: MakeApi, song: Path) -> None:
    api = make_api(max_duration_s=1.0)
    message = error_of(upload(api, song), 422, "audio_limit")
    assert message == "the uploaded file is 0:02 long; the limit is 0:01"
    assert api.leftovers() == []


def test_unknown_or_missing_model_is_422(api: Api, song: Path) -> None:
    message = error_of(link(api, model="nope"), 422, "model_not_found")
    assert "stemify models pull" in message and "tiny" in message
    message = error_of(link(api, model="htdemucs"), 422, "model_not_found")
    assert "stemify models pull htdemucs" in message
    # Sent before the file, the bad model is refused before the upload is stored.
    error_of(upload(api, song, data={"model": "nope"}), 422, "model_not_found")
    assert api.leftovers() == []
    inside = {"webhook_url": "http://169.254.169.254/latest"}
    assert "not allowed" in error_of(upload(api, song, data=inside), 422, "forbidden_url")
    assert api.leftovers() == []


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"stems": "vocals,banjo"}, "banjo"),
        ({"stems": " , "}, "empty"),
        ({"stems": "vocals", "two_stems": "vocals"}, "not both"),
        ({"two_stems": "guitar"}, "guitar"),
        ({"output_format": "ogg"}, "ogg"),
        ({"output_format": "flac", "bit_depth": "32"}, "32-bit"),
        ({"output_format": "mp3", "mp3_bitrate": "100"}, "100"),
        ({"shifts": "11"}, "shifts"),
        ({"shifts": "two"}, "integer"),
        ({"overlap": "0.995"}, "overlap"),
        ({"overlap": "nan"}, "overlap"),
        ({"webhook_url": "ftp://example.com/hook"}, "http"),
        ({"webhook_url": "http://169.254.169.254/latest/meta-data"}, "not allowed"),
        ({"webhook_url": "http://0x7f.1:8080/hook"}, "dotted-quad"),
        ({"bogus": "1"}, "bogus"),
    ],
)
def test_invalid_options_are_422(api: Api, fields: dict[str, str], needle: str) -> None:
    assert needle in error_of(link(api, **fields), 422)


def test_valid_options_are_kept(api: Api) -> None:
    response = link(
        api,
        model="tiny6",
        two_stems="guitar",
        output_format="flac",
        bit_depth="24",
        shifts="0",
        overlap="0.5",
        webhook_url="https://example.com/hook",
    )
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert params["model"] == "tiny6"
    assert params["two_stems"] == "guitar"
    assert (params["output_format"], params["bit_depth"]) == ("flac", 24)
    assert (params["shifts"], params["overlap"]) == (0, 0.5)


def test_bad_links_are_422(api: Api) -> None:
    for url in ("ftp://example.com/a.mp3", "file:///etc/passwd", "https://", "not a url", ""):
        error_of(link(api, url), 422, "invalid_url")
    error_of(link(api, "https://example.com/" + "a" * 3000), 422, "invalid_url")
    too_long_key = {"Idempotency-Key": "k" * 256}
    error_of(api.client.post("/jobs", data={"url": "https://e.com/a"}, headers=too_long_key), 422)


def test_idempotency_key_returns_the_same_job(api: Api, song: Path) -> None:
    first = upload(api, song, headers={"Idempotency-Key": "abc"})
    second = upload(api, song, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert [p for p in api.leftovers() if p.startswith("jobs/")] == [
        f"jobs/{first.json()['id']}/input"
    ]
    third = upload(api, song, headers={"Idempotency-Key": "other"})
    assert third.status_code == 202 and third.json()["id"] != first.json()["id"]
    linked = [
        api.client.post("/jobs", data={"url": "https://e.com/a"}, headers={"Idempotency-Key": "L"})
        for _ in range(2)
    ]
    assert linked[0].json()["id"] == linked[1].json()["id"]


# ---- reading ------------------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters_by_status(api: Api) -> None:
    ids = [link(api).json()["id"] for _ in range(5)]
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = api.client.get("/jobs", params=params).json()
        pages.append([job["id"] for job in body["jobs"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]

    assert api.client.post(f"/jobs/{ids[1]}/cancel").status_code == 202
    canceled = api.client.get("/jobs", params={"status": "canceled"}).json()
    assert [job["id"] for job in canceled["jobs"]] == [ids[1]]
    queued = api.client.get("/jobs", params={"status": "queued"}).json()
    assert len(queued["jobs"]) == 4
    assert len(api.client.get("/jobs").json()["jobs"]) == 5

    error_of(api.client.get("/jobs", params={"cursor": "!!not-a-cursor"}), 400)
    assert "limit" in error_of(api.client.get("/jobs", params={"limit": 0}), 422, "invalid_request")
    error_of(api.client.get("/jobs", params={"limit": 101}), 422)
    assert "status" in error_of(api.client.get("/jobs", params={"status": "done"}), 422)


def test_unknown_job_is_404(api: Api) -> None:
    for method, path in [
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/events"),
        ("GET", "/jobs/nope/stems/vocals"),
        ("GET", "/jobs/nope/stems.zip"),
        ("POST", "/jobs/nope/cancel"),
        ("DELETE", "/jobs/nope"),
    ]:
        error_of(api.client.request(method, path), 404, "not_found")


# ---- auth ---------------------------------------------------------------------------------------


def test_auth_required(make_api: MakeApi, make_audio: MakeAudio) -> None:
    api = make_api(auth_required=True)
    key_a, key_b = add_key(api.services.keys, "a"), add_key(api.services.keys, "b")
    admin = add_key(api.services.keys, "root", admin=True)
    as_a, as_b = {"X-API-Key": key_a}, {"Authorization": f"Bearer {key_b}"}

    message = error_of(api.client.get("/jobs"), 401, "unauthorized")
    assert "X-API-Key" in message and "Bearer" in message
    assert error_of(api.client.get("/jobs", headers={"X-API-Key": "wrong"}), 401) == (
        "invalid API key"
    )
    error_of(api.client.get("/models"), 401)
    error_of(link(api), 401)
    api.services.keys.revoke("a", now_utc())
    error_of(api.client.get("/jobs", headers=as_a), 401)
    key_a = add_key(api.services.keys, "a2")
    as_a = {"X-API-Key": key_a}

    # No key needed for health, readiness and the docs.
    assert api.client.get("/health").status_code == 200
    assert api.client.get("/ready").status_code == 200
    assert httpx.get(f"{api.root}/docs").status_code == 200
    assert httpx.get(f"{api.root}/openapi.json").status_code == 200

    response = api.client.post("/jobs", data={"url": "https://e.com/a.mp3"}, headers=as_b)
    assert response.status_code == 202
    queued_id = response.json()["id"]
    done, _ = finished_job(api, make_audio, owner="b")

    assert api.client.get(f"/jobs/{queued_id}", headers=as_b).status_code == 200
    assert [j["id"] for j in api.client.get("/jobs", headers=as_b).json()["jobs"]] == [
        done.id,
        queued_id,
    ]
    assert api.client.get("/jobs", headers=as_a).json()["jobs"] == []
    for method, path in [
        ("GET", f"/jobs/{queued_id}"),
        ("GET", f"/jobs/{queued_id}/events"),
        ("GET", f"/jobs/{done.id}/stems/vocals"),
        ("GET", f"/jobs/{done.id}/stems.zip"),
        ("POST", f"/jobs/{queued_id}/cancel"),
        ("DELETE", f"/jobs/{queued_id}"),
        ("DELETE", f"/jobs/{done.id}"),
    ]:
        error_of(api.client.request(method, path, headers=as_a), 404, "not_found")
    assert api.client.get(f"/jobs/{queued_id}", headers=as_b).json()["status"] == "queued"

    as_admin = {"X-API-Key": admin}
    assert api.client.get(f"/jobs/{queued_id}", headers=as_admin).status_code == 200
    assert api.client.get(f"/jobs/{done.id}/stems/vocals", headers=as_admin).status_code == 200
    assert len(api.client.get("/jobs", headers=as_admin).json()["jobs"]) == 2
    assert api.client.get("/models", headers=as_a).status_code == 200
    assert stored(api, queued_id).owner == "b"


def test_auth_off_needs_no_key(api: Api) -> None:
    assert api.client.get("/jobs").status_code == 200
    job_id = link(api).json()["id"]
    assert api.client.get(f"/jobs/{job_id}", headers={"X-API-Key": "anything"}).status_code == 200
    assert stored(api, job_id).owner is None


# ---- downloads ----------------------------------------------------------------------------------


def test_stem_download_full_and_ranges(api: Api, make_audio: MakeAudio) -> None:
    job, contents = finished_job(api, make_audio)
    vocals = contents["vocals"]
    size = len(vocals)
    path = f"/jobs/{job.id}/stems/vocals"

    full = api.client.get(path)
    assert full.status_code == 200
    assert full.content == vocals
    assert full.headers["content-type"] == "audio/wav"
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-length"] == str(size)
    assert full.headers["content-disposition"] == 'attachment; filename="My Song-vocals.wav"'

    part = api.client.get(path, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.content == vocals[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{size}"
    assert part.headers["content-length"] == "100"

    tail = api.client.get(path, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, vocals[-10:])
    assert tail.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"
    rest = api.client.get(path, headers={"Range": f"bytes={size - 5}-"})
    assert (rest.status_code, rest.content) == (206, vocals[-5:])
    clamped = api.client.get(path, headers={"Range": f"bytes=10-{size * 2}"})
    assert (clamped.status_code, clamped.content) == (206, vocals[10:])

    bad = api.client.get(path, headers={"Range": f"bytes={size}-"})
    error_of(bad, 416, "range_not_satisfiable")
    assert bad.headers["content-range"] == f"bytes */{size}"
    error_of(api.client.get(path, headers={"Range": "bytes=-0"}), 416)
    # Several or malformed ranges: the whole file.
    for header in ("bytes=0-1,5-6", "bytes=9-3", "items=0-1"):
        whole = api.client.get(path, headers={"Range": header})
        assert (whole.status_code, whole.content) == (200, vocals)

    error_of(api.client.get(f"/jobs/{job.id}/stems/bass"), 404, "not_found")


def test_unicode_download_name(api: Api, make_audio: MakeAudio) -> None:
    job, _ = finished_job(api, make_audio, input_name='Café "☕".flac')
    disposition = api.client.get(f"/jobs/{job.id}/stems/drums").headers["content-disposition"]
    assert disposition == (
        "attachment; filename=\"Caf_ ___-drums.wav\"; filename*=UTF-8''"
        "Caf%C3%A9%20%22%E2%98%95%22-drums.wav"
    )
    assert byte_range(None, 10) is None
    assert byte_range("bytes=2-", 10) == (2, 10)


def test_zip_holds_every_stem(api: Api, make_audio: MakeAudio) -> None:
    job, contents = finished_job(api, make_audio)
    response = api.client.get(f"/jobs/{job.id}/stems.zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="My Song-stems.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["drums.wav", "vocals.wav"]
        for name, data in contents.items():
            info = archive.getinfo(f"{name}.wav")
            assert info.compress_type == zipfile.ZIP_STORED
            assert archive.read(info) == data


def test_downloads_of_unfinished_jobs_are_409(api: Api) -> None:
    job_id = link(api).json()["id"]
    assert "queued" in error_of(api.client.get(f"/jobs/{job_id}/stems/vocals"), 409, "conflict")
    error_of(api.client.get(f"/jobs/{job_id}/stems.zip"), 409, "conflict")


# ---- events, cancel, delete ---------------------------------------------------------------------


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))


def test_events_follow_a_job_until_it_is_canceled(api: Api) -> None:
    job_id = link(api).json()["id"]
    with api.client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = read_events(response)
        kind, first = next(events)
        assert (kind, first["id"], first["status"]) == ("job", job_id, "queued")
        started = time.monotonic()
        assert httpx.post(f"{api.root}/api/v1/jobs/{job_id}/cancel").status_code == 202
        rest = list(events)  # the stream ends by itself once the job is finished
    assert time.monotonic() - started < 5
    assert rest and rest[-1][0] == "job"
    assert rest[-1][1]["status"] == "canceled"
    assert rest[-1][1]["error"]["code"] == "canceled"


def test_events_end_when_the_job_is_deleted_and_unsubscribe(api: Api) -> None:
    bus = api.services.events
    assert isinstance(bus, LocalEventBus)
    job_id = link(api).json()["id"]
    with api.client.stream("GET", f"/jobs/{job_id}/events") as response:
        events = read_events(response)
        assert next(events)[1]["status"] == "queued"
        assert api.client.delete(f"/jobs/{job_id}").status_code == 204
        assert list(events) == [("deleted", {"id": job_id})]
    other = link(api).json()["id"]
    with api.client.stream("GET", f"/jobs/{other}/events") as response:
        assert next(read_events(response))[1]["status"] == "queued"
        assert bus._watches  # listening while the client is connected
    # The client went away: the server notices and drops its subscription.
    deadline = time.monotonic() + 5
    while bus._watches and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not bus._watches


def test_events_of_a_finished_job_end_at_once(api: Api, make_audio: MakeAudio) -> None:
    job, _ = finished_job(api, make_audio)
    with api.client.stream("GET", f"/jobs/{job.id}/events") as response:
        events = list(read_events(response))
    assert [(kind, body["status"]) for kind, body in events] == [("job", "succeeded")]
    assert events[0][1]["stems"][0]["url"].startswith(f"/api/v1/jobs/{job.id}/stems/vocals?")


def test_cancel(api: Api, make_audio: MakeAudio) -> None:
    job_id = link(api).json()["id"]
    response = api.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "canceled"
    assert "already canceled" in error_of(api.client.post(f"/jobs/{job_id}/cancel"), 409)
    done, _ = finished_job(api, make_audio)
    message = error_of(api.client.post(f"/jobs/{done.id}/cancel"), 409, "conflict")
    assert message == "job already succeeded"


def test_delete_removes_the_job_and_its_files(api: Api, make_audio: MakeAudio, song: Path) -> None:
    job, _ = finished_job(api, make_audio)
    assert (api.storage.root / "jobs" / job.id).is_dir()
    response = api.client.delete(f"/jobs/{job.id}")
    assert response.status_code == 204 and response.content == b""
    error_of(api.client.get(f"/jobs/{job.id}"), 404)
    assert not (api.storage.root / "jobs" / job.id).exists()

    queued = upload(api, song).json()["id"]
    assert api.client.delete(f"/jobs/{queued}").status_code == 204
    assert api.store.get(queued) is None
    assert api.leftovers() == []


# ---- system -------------------------------------------------------------------------------------


def test_health(api: Api) -> None:
    response = api.client.get("/health")
    queue = {"depth": 0, "running": 0, "oldest_queued_age_s": None, "workers_alive": 0}
    assert response.status_code == 200
    # queue_status: the origin document's runbook name for the same figures.
    assert response.json() == {
        "status": "ok", "queue": queue, "queue_status": queue, "workers": [],
    }  # fmt: skip


def test_ready(api: Api) -> None:
    for _ in range(2):
        link(api)
    api.services.workers.seen("worker-1", now_utc(), 0)
    response = api.client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"store", "queue", "storage", "models", "workers"}
    assert all(check["ok"] for check in body["checks"].values())
    assert "tiny" in body["checks"]["models"]["detail"]
    assert body["checks"]["workers"]["detail"] == "1 alive, running 0 job(s)"
    assert body["queue"]["depth"] == 2
    assert body["queue"]["running"] == 0
    assert body["queue"]["oldest_queued_age_s"] >= 0
    assert [w["id"] for w in body["workers"]] == ["worker-1"]
    assert body["queue"]["workers_alive"] == 1
    fields = {"id", "hostname", "pid", "last_seen", "last_seen_age_s", "running"}
    assert set(body["workers"][0]) == fields | {"models", "lacks_default_model"}
    # This worker reported no models (an older worker): unknown, not "lacks".
    assert body["workers"][0]["models"] is None
    assert body["workers"][0]["lacks_default_model"] is None


def test_not_ready_without_models(make_api: MakeApi, tmp_path: Path) -> None:
    api = make_api(model_dir=tmp_path / "no-models")
    response = api.client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["models"]["ok"] is False
    assert "stemify models pull" in body["checks"]["models"]["detail"]
    assert body["checks"]["store"]["ok"] is True


def test_ready_with_another_model_than_the_missing_default(make_api: MakeApi) -> None:
    """Only a failed download of the default model makes /ready fail; other installed models
    still serve jobs that name them. /models says the default is missing and why."""
    api = make_api(default_model="htdemucs")
    response = api.client.get("/ready")
    assert response.status_code == 200, response.text
    assert "tiny" in response.json()["checks"]["models"]["detail"]
    models = {m["name"]: m for m in api.client.get("/models").json()["models"]}
    assert models["htdemucs"]["state"] == "missing"
    assert "stemify models pull htdemucs" in models["htdemucs"]["reason"]


def test_models(api: Api) -> None:
    api.services.models.get("tiny")
    body = api.client.get("/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert body["default_model"] == "tiny"
    assert set(models["tiny"]) == {
        "name",
        "description",
        "sources",
        "installed",
        "size_bytes",
        "official",
        "loaded",
        "state",
        "percent",
        "reason",
    }
    assert models["tiny"]["installed"] and models["tiny"]["loaded"]
    assert models["tiny"]["state"] == "installed" and models["tiny"]["reason"] is None
    missing = models["htdemucs"]
    assert missing["state"] == "missing" and missing["percent"] is None
    assert "stemify models pull htdemucs" in missing["reason"]
    assert models["tiny"]["sources"] == ["drums", "bass", "other", "vocals"]
    assert models["tiny6"]["installed"] and not models["tiny6"]["loaded"]
    assert models["htdemucs"]["official"] and not models["htdemucs"]["installed"]


def test_every_error_has_one_shape(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "no such endpoint" in error_of(api.client.get("/nope"), 404, "not_found")
    error_of(httpx.get(f"{api.root}/nope"), 404, "not_found")
    response = api.client.put("/jobs")
    error_of(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]

    def broken(job_id: str) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(api.services.store, "get", broken)
    response = api.client.get("/jobs/x")
    assert error_of(response, 500, "internal_error") == "an internal error occurred"
    assert "secret" not in response.text


def test_openapi_documents_the_routes(api: Api) -> None:
    spec = httpx.get(f"{api.root}/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/jobs",
        "/api/v1/stemify",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/events",
        "/api/v1/jobs/{job_id}/stems/{stem}",
        "/api/v1/jobs/{job_id}/stems.zip",
        "/api/v1/models",
        "/api/v1/health",
        "/api/v1/ready",
    ):
        assert path in paths
    form = paths["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "file" in form["schema"]["properties"]
