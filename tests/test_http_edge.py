"""The HTTP edge: security headers on every response of every route (walked from the app
itself), the /docs exception, HSTS only over https from a trusted proxy, CORS from an
allowlist, and body limits."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount
from support.live import Live, add_key, error_of, finished_job, live_app, settings_for

from stemify.api.security_headers import CSP
from stemify.web import STATIC_DIR

pytestmark = pytest.mark.api

MakeAudio = Callable[..., Path]
EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture
def live(tmp_path: Path, model_dir: Path) -> Iterator[Live]:
    with live_app(settings_for(tmp_path, model_dir, max_body_kb=4)) as running:
        yield running


def assert_secure(response: httpx.Response, csp: str = CSP) -> None:
    where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, f"{name} missing on {where}"
    assert response.headers.get("content-security-policy") == csp, where
    assert "strict-transport-security" not in response.headers, where  # plain http


def routes_of(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(method, path template)`` of every route, included routers (FastAPI includes them
    lazily) and mounts (one request inside) of the app."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from routes_of(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            asset = next(p for p in sorted(STATIC_DIR.rglob("*.js")) if p.is_file())
            yield "GET", f"{prefix}{route.path}/{asset.relative_to(STATIC_DIR).as_posix()}"
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                yield method, prefix + route.path


def requests_for_every_route(live: Live, job_id: str) -> list[tuple[str, str]]:
    found = []
    for method, template in routes_of(live.app.routes):
        path = template.replace("{job_id}", job_id).replace("{stem}", "vocals")
        found.append((method, re.sub(r"\{[^}]+\}", "x", path)))
    return found


def test_every_route_carries_the_headers(live: Live, make_audio: MakeAudio) -> None:
    key = add_key(live.keys, "k", admin=True)
    job = finished_job(live, make_audio, owner="k")
    routes = requests_for_every_route(live, job.id)
    assert ("GET", "/docs") in routes and ("GET", "/openapi.json") in routes
    assert any(path.startswith("/api/v1/jobs/") for _, path in routes)
    statuses = set()
    with httpx.Client(base_url=live.root, headers={"X-API-Key": key}, timeout=20) as client:
        with client.stream("GET", f"/api/v1/jobs/{job.id}/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            assert_secure(events)
        for method, path in routes:  # DELETE /jobs/{id} among them: the job goes last
            if path == "/docs":
                continue  # its own policy, below
            response = client.request(method, path)
            statuses.add(response.status_code)
            assert_secure(response)
        # Without a key, unknown paths, wrong methods, a stream of events.
        for response in (
            httpx.get(f"{live.root}/api/v1/jobs"),
            client.get("/nope"),
            client.put("/api/v1/jobs"),
        ):
            assert_secure(response)
    assert {200, 204, 400, 404} <= statuses


def test_unexpected_errors_carry_the_headers(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    key = add_key(live.keys, "k")

    def broken(job_id: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(live.services.store, "get", broken)
    response = httpx.get(f"{live.root}/api/v1/jobs/x", headers={"X-API-Key": key})
    error_of(response, 500, "internal_error")
    assert_secure(response)


def test_docs_get_a_narrow_exception(live: Live) -> None:
    response = httpx.get(f"{live.root}/docs")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert policy != CSP
    for name, value in EXPECTED.items():
        assert response.headers[name] == value
    page = response.text
    # Exactly the CDN assets the page loads, by full URL, and its one inline script by hash.
    for url in re.findall(r'(?:src|href)="(https://[^"]+\.(?:js|css))"', page):
        assert url in policy
    assert re.search(r"script-src [^;]*'sha256-[A-Za-z0-9+/=]+'", policy)
    assert "'unsafe-inline'" not in policy and "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
    assert not re.search(r"(?:script|style)-src[^;]*https://cdn\.jsdelivr\.net[ ;]", policy)


def test_hsts_only_over_https_from_a_trusted_proxy(tmp_path: Path, model_dir: Path) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with live_app(settings_for(tmp_path / "a", model_dir), auth_required=False) as untrusting:
        response = httpx.get(f"{untrusting.root}/api/v1/health", headers=forwarded)
        assert "strict-transport-security" not in response.headers
    trusted = settings_for(
        tmp_path / "b", model_dir, trusted_proxies=["127.0.0.1"], limit_anonymous=True,
        reads_per_minute=1,
    )  # fmt: skip
    with live_app(trusted, auth_required=False) as proxied:
        response = httpx.get(f"{proxied.root}/api/v1/jobs", headers=forwarded)
        assert response.headers["strict-transport-security"] == "max-age=63072000"
        assert "strict-transport-security" not in httpx.get(f"{proxied.root}/api/v1/health").headers
        # The forwarded client address is the one limited: another one is not.
        other = {**forwarded, "X-Forwarded-For": "203.0.113.10"}
        error_of(httpx.get(f"{proxied.root}/api/v1/jobs", headers=forwarded), 429, "rate_limited")
        assert httpx.get(f"{proxied.root}/api/v1/jobs", headers=other).status_code == 200


def test_cors_from_the_allowlist_only(tmp_path: Path, model_dir: Path) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    with live_app(settings_for(tmp_path / "a", model_dir), auth_required=False) as closed:
        response = httpx.options(
            f"{closed.root}/api/v1/jobs", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in response.headers
        response = httpx.get(f"{closed.root}/api/v1/jobs", headers={"Origin": "https://a.example"})
        assert "access-control-allow-origin" not in response.headers
    allowed = settings_for(tmp_path / "b", model_dir, cors_origins=["https://app.example"])
    with live_app(allowed, auth_required=False) as live:
        ok = httpx.options(
            f"{live.root}/api/v1/jobs", headers={"Origin": "https://app.example", **preflight}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
        assert_secure(ok)
        denied = httpx.options(
            f"{live.root}/api/v1/jobs", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "origin" in error_of(denied, 400, "bad_request")
        assert "access-control-allow-origin" not in denied.headers
        simple = httpx.get(f"{live.root}/api/v1/jobs", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "retry-after" in simple.headers["access-control-expose-headers"].lower()


def test_body_limits(live: Live, make_audio: MakeAudio) -> None:
    key = add_key(live.keys, "k")
    with live.client(key) as api:
        big = b"x" * (5 << 10)
        message = error_of(api.post("/jobs/x/cancel", content=big), 413, "too_large")
        assert "4 KiB" in message
        assert_secure(api.post("/jobs/x/cancel", content=big))

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"y" * 1024

        error_of(api.request("DELETE", "/jobs/x", content=chunks()), 413, "too_large")
        error_of(api.post("/jobs/x/cancel", content=b"small"), 404, "not_found")
        # Submissions are bound by the upload limit instead.
        song = make_audio("song.wav", seconds=1.0)
        assert song.stat().st_size > 4 << 10
        with song.open("rb") as file:
            assert api.post("/jobs", files={"file": ("song.wav", file)}).status_code == 202
