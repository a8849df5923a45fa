"""Links that must not reach inside: the URL guard, the guarded proxy and the service.

Nothing here can send a packet off this machine, even if the guard were broken:
- private, link-local, metadata, CGNAT, ULA and multicast addresses are only ever checked as
  literals (``parse_url``/``check_url`` decide from the string; no resolver is asked);
- resolver-level tests use names from /etc/hosts (loopback) or an injected resolver;
- end-to-end attempts (redirects included) are aimed only at canary servers on 127.0.0.x
  that count what they receive, so a broken guard shows up as a request counted there.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.processes import Cluster, client, embedded_env, free_port, wait_for

from stemify.egress.fetch import FetchLimits, fetch_url
from stemify.egress.guarded_proxy import GuardedProxy
from stemify.egress.urlguard import (
    IPAddress,
    URLPolicy,
    address_problem,
    check_submitted_url,
    check_url,
    parse_url,
)
from stemify.errors import DownloadError, ForbiddenURLError, InvalidURLError
from stemify.services import build_services
from stemify.settings import Settings

pytestmark = [pytest.mark.service, pytest.mark.timeout(90)]

LIMITS = FetchLimits(max_bytes=10**6, max_duration_s=600, timeout_s=10, retries=0)
LOOPBACK = URLPolicy(allow_loopback=True)


# ---- canaries --------------------------------------------------------------------------------


class Canary:
    """An HTTP server on 127.0.0.x that counts requests; ``routes`` maps a path to
    (status, headers, body); anything else is a 200 with a few bytes."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[str] = []
        self.bodies: list[bytes] = []
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                status, headers, body = outer.routes.get(self.path, (200, {}, b"canary"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = (status, {"Location": location}, b"")
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    server = Canary()
    yield server
    server.close()


@pytest.fixture
def front() -> Iterator[Canary]:
    """The server a link points at: it answers with redirects."""
    server = Canary()
    yield server
    server.close()


# ---- the guard, from the string alone ------------------------------------------------------

FORBIDDEN_LITERALS = {
    "decimal": "http://2130706433/",
    "octal": "http://0177.0.0.1/",
    "hex": "http://0x7f.1/",
    "hex-dotted": "http://0x7f.0x0.0x0.0x1/",
    "short": "http://127.1/",
    "decimal-metadata": "http://2852039166/latest/meta-data/",
    "ipv4-mapped": "http://[::ffff:127.0.0.1]/",
    "ipv4-mapped-hex": "http://[::ffff:7f00:1]/",
    "ipv4-compatible": "http://[::127.0.0.1]/",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "metadata-mapped": "http://[::ffff:169.254.169.254]/",
    "metadata-nat64": "http://[64:ff9b::a9fe:a9fe]/",
    "metadata-6to4": "http://[2002:a9fe:a9fe::1]/",
    "private-10": "http://10.0.0.1/",
    "private-172": "https://172.16.5.4/",
    "private-192": "http://192.168.1.1:8080/",
    "cgnat": "http://100.64.0.1/",
    "unspecified": "http://0.0.0.0/",
    "ula": "http://[fd12:3456::1]/",
    "ipv6-link-local": "http://[fe80::1]/",
    "multicast": "http://224.0.0.1/",
    "ipv6-multicast": "http://[ff02::1]/",
    "broadcast": "http://255.255.255.255/",
    "reserved": "http://240.0.0.1/",
    "teredo-private": "http://[2001:0:4136:e378:8000:63bf:f5ff:fefe]/",
    "zone-id": "http://[fe80::1%25eth0]/",
    "five-parts": "http://1.2.3.4.5/",
}


# Loopback, in forms the resolver normalises: refused unless loopback is allowed.
LOOPBACK_LITERALS = {
    "trailing-dot": "http://127.0.0.1./",
    "fullwidth-digits": "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",
    "ipv6-loopback": "http://[::1]/",
    "loopback-net": "http://127.9.9.9/",
}


@pytest.mark.parametrize(
    ("url", "policies"),
    [*((url, (URLPolicy(), LOOPBACK)) for url in FORBIDDEN_LITERALS.values())]
    + [(url, (URLPolicy(),)) for url in LOOPBACK_LITERALS.values()],
    ids=[*FORBIDDEN_LITERALS, *LOOPBACK_LITERALS],
)
def test_literal_addresses_are_refused(url: str, policies: tuple[URLPolicy, ...]) -> None:
    # The first group is refused even with loopback allowed (as the tests' services run).
    for policy in policies:
        with pytest.raises(InvalidURLError) as info:
            parse_url(url, policy)
        message = info.value.message
        assert "not allowed" in message or "not a host name" in message or "zone" in message
        with pytest.raises(InvalidURLError):
            check_submitted_url(url, policy)


def test_refusals_name_the_reason() -> None:
    def refusal(url: str) -> ForbiddenURLError:
        with pytest.raises(ForbiddenURLError) as info:
            parse_url(url, URLPolicy())
        assert info.value.code == "forbidden_url"
        return info.value

    assert refusal("http://169.254.169.254/").message.endswith(
        "169.254.169.254, the cloud metadata address"
    )
    assert "a shared (CGNAT) address" in refusal("http://100.64.0.1/").message
    assert "a private network address" in refusal("http://[fd00::1]/").message
    assert "a link-local address" in refusal("http://[fe80::1]/").message
    assert "a loopback address inside an IPv6 address" in refusal("http://[::ffff:7f00:1]/").message
    with pytest.raises(InvalidURLError, match="four decimal numbers"):
        parse_url("http://2130706433/", URLPolicy())


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret-pw@example.com/song.mp3",
        "http://user@example.com/song.mp3",
        "https://:secret-pw@example.com/",
        "http://example.com@127.0.0.1/",
    ],
)
def test_credentials_are_refused_and_never_repeated(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        parse_url(url, LOOPBACK)
    assert info.value.message == "links with a user name or password (user:pass@) are not allowed"
    assert "secret" not in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.mp3",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "dict://127.0.0.1:11211/stat",
        "data:audio/mpeg;base64,AAAA",
        "javascript:alert(1)",
        "//example.com/a.mp3",
    ],
)
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(InvalidURLError, match=r"only http:// and https:// links are supported"):
        parse_url(url, LOOPBACK)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8"],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def test_loopback_escape_hatch_allows_loopback_only() -> None:
    parse_url("http://127.0.0.1:8000/a.mp3", LOOPBACK)
    parse_url("http://127.8.9.10/a.mp3", LOOPBACK)
    parse_url("http://[::1]:9/a.mp3", LOOPBACK)
    with pytest.raises(ForbiddenURLError):
        parse_url("http://127.0.0.1:8000/a.mp3", URLPolicy())
    only_one_port = URLPolicy(allow_loopback=True, loopback_ports=frozenset({8000}))
    parse_url("http://127.0.0.1:8000/a.mp3", only_one_port)
    with pytest.raises(ForbiddenURLError, match="loopback"):
        parse_url("http://127.0.0.1:8001/a.mp3", only_one_port)


def test_allowlist() -> None:
    policy = URLPolicy(allowlist=("YouTube.com", "youtu.be.", " soundcloud.com"))
    for url in [
        "https://youtube.com/watch?v=x",
        "https://www.youtube.com/watch?v=x",
        "https://m.YOUTUBE.com./watch?v=x",
        "https://youtu.be/x",
        "https://api.soundcloud.com/tracks/1",
    ]:
        assert parse_url(url, policy).host.endswith(("youtube.com", "youtu.be", "soundcloud.com"))
    for url in [
        "https://notyoutube.com/x",
        "https://youtube.com.evil.example/x",
        "https://evil.example/youtube.com",
        "https://8.8.8.8/x",
        "http://[2606:4700:4700::1111]/x",
    ]:
        with pytest.raises(ForbiddenURLError, match=r"this server accepts links to youtube\.com"):
            parse_url(url, policy)


def test_allowlist_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEMIFY_URL_ALLOWLIST", " youtube.com, SoundCloud.com ,")
    monkeypatch.delenv("STEMIFY_ALLOW_LOOPBACK_URLS", raising=False)
    services = build_services(Settings(data_dir=tmp_path))
    services.close()
    policy = services.url_policy
    assert policy == URLPolicy(allowlist=("youtube.com", "soundcloud.com"))
    assert not policy.allow_loopback
    with pytest.raises(ForbiddenURLError):
        parse_url("https://example.com/a.mp3", policy)


# ---- the resolver ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST.", "vm", "runsc"])
def test_names_resolving_to_loopback_are_refused(name: str) -> None:
    # /etc/hosts names: resolved locally, never over the network.
    with pytest.raises(ForbiddenURLError, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        check_url(f"http://{name}:9/song.mp3", URLPolicy())


def test_every_address_of_a_name_is_checked() -> None:
    answers: list[IPAddress] = [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("10.1.2.3"),
    ]
    with pytest.raises(ForbiddenURLError, match=r"media\.example resolves to 10\.1\.2\.3"):
        check_url("https://media.example/a.mp3", URLPolicy(), resolve=lambda host, port: answers)


def test_unresolvable_names_wait_for_the_worker() -> None:
    # At submit time a name that does not resolve (yet) is accepted; the worker checks again.
    assert check_submitted_url("https://nowhere.invalid/a.mp3", URLPolicy())
    with pytest.raises(DownloadError, match=r"the host nowhere\.invalid was not found"):
        check_url("https://nowhere.invalid/a.mp3", URLPolicy())


# ---- redirects and media URLs, end to end through yt-dlp and the proxy ----------------------


def test_redirect_to_a_forbidden_loopback_port(
    front: Canary, canary: Canary, tmp_path: Path
) -> None:
    # Loopback stands in for "inside": the link's own server is allowed, the canary is not.
    policy = URLPolicy(allow_loopback=True, loopback_ports=frozenset({front.port}))
    for status in (301, 302, 303, 307, 308):
        link = front.redirect(f"/r{status}.mp3", f"{canary.base}/secret", status)
        with pytest.raises(ForbiddenURLError) as info:
            fetch_url(link, tmp_path / "job", LIMITS, policy=policy)
        assert info.value.code == "forbidden_url"
        assert "a loopback address" in info.value.message
    assert canary.requests == []
    assert len(front.requests) == 5
    assert not (tmp_path / "job").exists() or list((tmp_path / "job").iterdir()) == []


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/x", "http://vm:{port}/x"])
def test_redirect_off_the_allowlist_is_refused(
    front: Canary, canary: Canary, tmp_path: Path, target: str
) -> None:
    # "localhost" is the allowlisted domain here; the canary is reached by other names.
    policy = URLPolicy(allowlist=("localhost",), allow_loopback=True)
    link = front.redirect("/song.mp3", target.format(port=canary.port))
    with pytest.raises(ForbiddenURLError, match=r"this server accepts links to localhost only"):
        fetch_url(link.replace("127.0.0.1", "localhost"), tmp_path / "job", LIMITS, policy=policy)
    assert front.requests == ["/song.mp3"]
    assert canary.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "http://0x7f.1:{port}/secret",
        "http://2130706433:{port}/secret",
        "http://0.0.0.0:{port}/secret",
        "http://[::ffff:127.0.0.1]:{port}/secret",
        "ftp://127.0.0.1:{port}/secret",
    ],
)
def test_redirect_to_odd_notations_is_refused_even_with_loopback_allowed(
    front: Canary, canary: Canary, tmp_path: Path, target: str
) -> None:
    link = front.redirect("/song.mp3", target.format(port=canary.port))
    with pytest.raises(DownloadError):
        fetch_url(link, tmp_path / "job", LIMITS, policy=LOOPBACK)
    assert canary.requests == []


def test_media_url_found_in_a_page_is_checked(
    front: Canary, canary: Canary, tmp_path: Path
) -> None:
    page = f"<html><title>t</title><audio src='{canary.base}/a.mp3'></audio></html>".encode()
    front.routes["/page"] = (200, {"Content-Type": "text/html"}, page)
    policy = URLPolicy(allow_loopback=True, loopback_ports=frozenset({front.port}))
    with pytest.raises(ForbiddenURLError, match="leads on to a link that is not allowed"):
        fetch_url(f"{front.base}/page", tmp_path / "job", LIMITS, policy=policy)
    assert canary.requests == []
    assert front.requests == ["/page"]


def test_the_proxy_connects_to_the_address_it_checked() -> None:
    """DNS rebinding: the proxy resolves once per connection and connects to that answer.
    The first answer is 127.0.0.1 (allowed); every later one is 127.0.0.2 (the canary)."""
    port = free_port()
    real, rebound = Canary("127.0.0.1", port), Canary("127.0.0.2", port)
    calls: list[str] = []

    def resolve(host: str, _port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address("127.0.0.1" if len(calls) == 1 else "127.0.0.2")]

    policy = URLPolicy(allow_loopback=True)
    try:
        with GuardedProxy(policy, timeout_s=5, resolve=resolve) as proxy:
            with httpx.Client(proxy=proxy.url, timeout=5) as http:
                response = http.get(f"http://rebind.example:{port}/song.mp3")
            assert response.status_code == 200
            assert proxy.connections == 1
    finally:
        real.close()
        rebound.close()
    assert calls == ["rebind.example"]
    assert real.requests == ["/song.mp3"]
    assert rebound.requests == []


def test_the_proxy_relays_a_body_sent_after_the_head(canary: Canary) -> None:
    """A POST whose body arrives in a second packet (as webhooks send it) is relayed whole
    before the proxy waits for the answer; a chunked body is refused."""
    head = (
        f"POST {canary.base}/hook HTTP/1.1\r\nHost: 127.0.0.1:{canary.port}\r\n"
        "Content-Length: 5\r\n\r\n"
    ).encode()
    with GuardedProxy(LOOPBACK, timeout_s=5) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head)
            time.sleep(0.2)
            sock.sendall(b"hello")
            assert sock.recv(1024).startswith(b"HTTP/1.0 200")
        chunked = head.replace(b"Content-Length: 5", b"Transfer-Encoding: chunked")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(chunked + b"5\r\nhello\r\n0\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 400")
    assert canary.bodies == [b"hello"]


def test_the_proxy_refuses_tunnels_to_forbidden_addresses(canary: Canary) -> None:
    with GuardedProxy(URLPolicy(), timeout_s=5) as proxy:
        with httpx.Client(proxy=proxy.url, timeout=5, verify=False) as http:
            with pytest.raises(httpx.ProxyError):
                http.get(f"https://127.0.0.1:{canary.port}/")
            assert http.get(f"http://127.0.0.1:{canary.port}/").status_code == 403
        assert isinstance(proxy.error, ForbiddenURLError)
        assert proxy.connections == 0
    assert canary.requests == []


# ---- the service ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("ssrf")
    env = embedded_env(
        tmp, model_dir, {"STEMIFY_ALLOW_LOOPBACK_URLS": "1", "STEMIFY_SECRET_KEY": "t"}
    )
    cluster = Cluster(tmp, env)
    cluster.serve()
    yield cluster
    cluster.stop()


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/", "forbidden_url"),
        ("http://0177.0.0.1:9/a.mp3", "invalid_url"),
        ("http://[::ffff:10.0.0.1]/a.mp3", "forbidden_url"),
        ("http://user:hunter2@example.com/a.mp3", "invalid_url"),
        ("gopher://127.0.0.1:6379/_x", "invalid_url"),
    ],
)
def test_submit_refuses(service: Cluster, url: str, code: str) -> None:
    response = client(service.base).post("/jobs", data={"url": url})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "hunter2" not in response.text


def test_a_job_whose_link_redirects_inside_fails(
    service: Cluster, front: Canary, canary: Canary
) -> None:
    link = front.redirect("/song.mp3", f"http://0.0.0.0:{canary.port}/secret")
    api = client(service.base)
    response = api.post("/jobs", data={"url": link})
    assert response.status_code == 202, response.text
    done = wait_for(api, response.json()["id"], timeout=60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "forbidden_url", done
    assert "the unspecified address" in done["error"]["message"]
    assert canary.requests == []
