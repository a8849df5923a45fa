"""Where a link may point: the one place that decides whether stemify may connect to a URL.

A link is refused when it is not plain http(s), carries credentials, names its host as an IP
address in an unusual notation (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``: the C
resolver reads them all as 127.0.0.1), is outside the optional domain allowlist, or when ANY
address its host resolves to is not a public unicast address — loopback, private, link-local
(169.254.169.254, the cloud metadata service), CGNAT, multicast, reserved, unspecified, IPv6
unique-local and link-local, and IPv6 addresses that embed one of those (IPv4-mapped and
-compatible, NAT64, 6to4, Teredo).

:func:`check_url` runs at submit time and before a download; :func:`checked_addresses` is
what :mod:`stemify.egress.guarded_proxy` calls for every connection yt-dlp makes (each redirect
hop included), connecting to the very address it checked, so a DNS answer that changes
between check and connection (rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from stemify.errors import DownloadError, ForbiddenURLError, InvalidURLError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]

MAX_URL_CHARS = 4096

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_METADATA = ipaddress.IPv4Address("169.254.169.254")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
# A label the resolver may read as a number: decimal, octal (leading 0) or hex (0x...).
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class URLPolicy:
    """What links may point at. The default allows any public host and nothing else."""

    allowlist: tuple[str, ...] = ()
    """Domains (a domain allows its subdomains); empty allows every public host."""
    allow_loopback: bool = False
    """Tests only: let loopback addresses through (never any other non-public address)."""
    loopback_ports: frozenset[int] = frozenset()
    """With ``allow_loopback``, only these ports when not empty (tests of redirects)."""

    def __post_init__(self) -> None:
        cleaned = tuple(normal_domain(domain) for domain in self.allowlist)
        object.__setattr__(self, "allowlist", tuple(d for d in cleaned if d))


@dataclass(frozen=True)
class Target:
    """A link's parts that decide where a connection goes."""

    scheme: str
    host: str
    """ASCII (IDNA), lower case, no trailing dot; an IPv6 literal without brackets."""
    port: int
    literal: IPAddress | None
    """The address, when the host is written as one."""


def parse_url(url: str, policy: URLPolicy) -> Target:
    """Check a link's shape, scheme, credentials, host notation and the allowlist (no DNS)."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidURLError(f"the link is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in url):
        raise InvalidURLError("the link must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        user, password = parts.username, parts.password
    except ValueError:
        raise InvalidURLError("the link has an invalid host or port") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}://" if scheme else "a link without a scheme"
        raise InvalidURLError(f"only http:// and https:// links are supported, not {shown}")
    if user is not None or password is not None:
        # The credentials themselves are never repeated back.
        raise InvalidURLError("links with a user name or password (user:pass@) are not allowed")
    if not parts.hostname:
        raise InvalidURLError("the link has no host name")
    host, literal = _host(parts.hostname)
    if port == 0:
        raise InvalidURLError("the link has an invalid port")
    target = Target(scheme, host, port or (443 if scheme == "https" else 80), literal)
    _check_allowlist(target, policy)
    if literal is not None:
        _check_address(host, literal, target.port, policy)
    return target


def check_url(url: str, policy: URLPolicy, *, resolve: Resolver | None = None) -> Target:
    """:func:`parse_url`, then resolve the host and check every address. A host that does
    not resolve is a :class:`DownloadError`."""
    target = parse_url(url, policy)
    checked_addresses(target, policy, resolve=resolve)
    return target


def check_submitted_url(url: str, policy: URLPolicy) -> str:
    """The submit-time check: as :func:`check_url`, except that a host that does not resolve
    (yet) is accepted — the worker checks it again, for every connection it makes."""
    target = parse_url(url, policy)
    try:
        checked_addresses(target, policy)
    except ForbiddenURLError:
        raise
    except DownloadError:
        pass
    return url


def checked_addresses(
    target: Target, policy: URLPolicy, *, resolve: Resolver | None = None
) -> list[IPAddress]:
    """Every address ``target.host`` resolves to, once each, all of them allowed; connect
    only to these (never resolve the name again)."""
    if target.literal is not None:
        _check_address(target.host, target.literal, target.port, policy)
        return [target.literal]
    addresses = (resolve or resolve_host)(target.host, target.port)
    if not addresses:
        raise DownloadError(f"could not download the link: the host {target.host} was not found")
    for address in addresses:
        _check_address(target.host, address, target.port, policy)
    return addresses


def resolve_host(host: str, port: int) -> list[IPAddress]:
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise DownloadError(f"could not download the link: the host {host} was not found") from None
    found: list[IPAddress] = []
    for *_, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def address_problem(address: IPAddress) -> str | None:
    """Why connecting to ``address`` is refused ("a loopback address", ...), or None for a
    public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} inside an IPv6 address" if problem else None
        if address in _NAT64_LOCAL:
            return "a private network address"
        if address.is_site_local:
            return "a private network address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address == _METADATA:
        return "the cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a shared (CGNAT) address"
    if address.is_private:
        return "a private network address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    packed = address.packed
    if packed[:12] == bytes(12) and int(address) > 1:
        return ipaddress.IPv4Address(packed[12:])  # IPv4-compatible ::a.b.c.d (deprecated)
    if address in _NAT64:
        return ipaddress.IPv4Address(packed[12:])
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        _server, client = address.teredo
        return client
    return None


def _check_address(host: str, address: IPAddress, port: int, policy: URLPolicy) -> None:
    problem = address_problem(address)
    if problem is None:
        return
    loopback_allowed = policy.allow_loopback and (
        not policy.loopback_ports or port in policy.loopback_ports
    )
    if problem == "a loopback address" and loopback_allowed:
        return
    where = host if _is_literal(host) else f"{host} resolves to {address}"
    raise ForbiddenURLError(
        f"links to local or private network addresses are not allowed: {where}, {problem}"
    )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host(raw: str) -> tuple[str, IPAddress | None]:
    """The host in the form the resolver sees, and its address when it is an IP literal."""
    if ":" in raw:  # urlsplit took it from [brackets]
        if "%" in raw:
            raise InvalidURLError("the link's IPv6 address must not have a zone (%...)")
        try:
            return raw, ipaddress.IPv6Address(raw)
        except ValueError:
            raise InvalidURLError(f"the link's host [{raw}] is not a valid IPv6 address") from None
    try:
        # What getaddrinfo itself does to a name (IDNA 2003: "１２７.０.０.１" is 127.0.0.1).
        host = raw.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidURLError("the link's host name is not valid") from None
    host = host.removesuffix(".")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # URL rules (WHATWG) and the C resolver both read such a host as an IPv4 address.
        try:
            return host, ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidURLError(
                f"the link's host {host} is not a host name or a dotted-quad IPv4 address "
                "(IP addresses must be written as four decimal numbers, a.b.c.d)"
            ) from None
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise InvalidURLError(f"the link's host {host} is not a valid host name")
    return host, None


def normal_domain(domain: str) -> str:
    """An allowlist entry as host names are compared: lower case, IDNA, no dots around."""
    cleaned = domain.strip().lower().strip(".")
    try:
        return cleaned.encode("idna").decode("ascii") if cleaned else ""
    except UnicodeError:
        raise ValueError(f"{domain!r} in the URL allowlist is not a domain name") from None


def _check_allowlist(target: Target, policy: URLPolicy) -> None:
    if not policy.allowlist:
        return
    host = target.host
    allowed = target.literal is None and any(
        host == domain or host.endswith("." + domain) for domain in policy.allowlist
    )
    if not allowed:
        raise ForbiddenURLError(
            f"links to {host} are not allowed: this server accepts links to "
            f"{', '.join(policy.allowlist)} only"
        )
