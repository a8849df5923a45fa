"""Links through a CDN in front of the bucket: ``STEMIFY_CDN_BASE_URL`` + the object's key
(the bucket's own key, storage prefix included, as a CDN with the bucket as its origin sees it).

Public objects get the plain URL; with a key pair id and its RSA private key the links are
CloudFront signed URLs with a canned policy (``Expires``, ``Signature``, ``Key-Pair-Id``;
RSA-SHA1 as CloudFront requires) made by botocore's ``CloudFrontSigner``. A CDN cannot take
a Content-Disposition override from the link: a stem is saved under its object's name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from stemify.errors import ConfigurationError
from stemify.settings import Settings
from stemify.storage.base import check_key

# Links kept: each stem of each job polled within one expiry step.
_CACHED = 4096


class CdnLinks:
    kind: Literal["cdn"] = "cdn"

    def __init__(self, base_url: str, object_prefix: str, signer: CloudFrontSigner | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.object_prefix = object_prefix
        self.signer = signer
        parts = urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"

        # An RSA signature per link is ~0.3 ms and the job JSON is polled: each link is
        # signed once per (key, expiry) and reused (the signature is deterministic anyway).
        self._signed = functools.lru_cache(maxsize=_CACHED)(self._sign)

    def url(self, key: str, expires: int, disposition: str) -> str:
        url = f"{self.base_url}/{quote(self.object_prefix + check_key(key))}"
        return url if self.signer is None else self._signed(url, expires)

    def _sign(self, url: str, expires: int) -> str:
        assert self.signer is not None
        signed: str = self.signer.generate_presigned_url(
            url, date_less_than=datetime.fromtimestamp(expires, UTC)
        )
        return signed


def cdn_links(settings: Settings, object_prefix: str) -> CdnLinks:
    """The CDN links the settings describe; ConfigurationError naming the setting otherwise."""
    base = settings.cdn_base_url
    if not base:
        raise ConfigurationError(
            "STEMIFY_CDN_KEY_ID and STEMIFY_CDN_PRIVATE_KEY_FILE need STEMIFY_CDN_BASE_URL "
            "(the CDN's address, e.g. https://cdn.example.com)"
        )
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"STEMIFY_CDN_BASE_URL must be an http(s) URL such as https://cdn.example.com, "
            f"got {base!r}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            "STEMIFY_CDN_BASE_URL must be a plain address: no query, fragment or credentials"
        )
    key_id, key_file = settings.cdn_key_id, settings.cdn_private_key_file
    if (key_id is None) != (key_file is None):
        raise ConfigurationError(
            "signed CDN links need both STEMIFY_CDN_KEY_ID and STEMIFY_CDN_PRIVATE_KEY_FILE "
            "(set neither for public objects)"
        )
    signer = None
    if key_id is not None and key_file is not None:
        if not key_id.strip():
            raise ConfigurationError("STEMIFY_CDN_KEY_ID is empty")
        signer = CloudFrontSigner(key_id.strip(), rsa_sha1_signer(load_private_key(key_file)))
    return CdnLinks(base, object_prefix, signer)


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """The RSA private key (PEM, unencrypted) in ``path``, or ConfigurationError saying why not
    (the key's contents are never part of the message)."""
    where = f"STEMIFY_CDN_PRIVATE_KEY_FILE {path}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{where} does not exist") from None
    except OSError as e:
        raise ConfigurationError(f"{where} cannot be read: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{where} is not an unencrypted PEM private key (CloudFront's key pairs are RSA, "
            "e.g. openssl genrsa -out private_key.pem 2048)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError(f"{where} holds a {type(key).__name__}; CloudFront needs RSA")
    return key


def rsa_sha1_signer(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    def sign(message: bytes) -> bytes:
        return key.sign(message, padding.PKCS1v15(), hashes.SHA1())  # CloudFront signs with SHA-1

    return sign
