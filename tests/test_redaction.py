"""What the log and error reports must never show: known secret values and URL passwords."""

from __future__ import annotations

import pytest

from stemify.redaction import Redactor, redact_url

pytestmark = pytest.mark.unit


def test_known_secrets_and_url_passwords_are_masked_wherever_they_are() -> None:
    redactor = Redactor(["s3cr3t-value-1234", "short"])
    line = "key s3cr3t-value-1234 in redis://:hunter2@cache:6379/0 and postgresql://app:pw@db/x"
    cleaned = redactor.clean(line)
    assert "s3cr3t-value-1234" not in cleaned and "hunter2" not in cleaned
    assert ":pw@" not in cleaned and "postgresql://app:**********@db/x" in cleaned
    assert redactor.clean("a short word") == "a short word"  # values under 8 characters are kept


def test_text_without_a_secret_or_an_at_sign_is_unchanged() -> None:
    redactor = Redactor(["s3cr3t-value-1234"])
    text = "GET /api/v1/jobs/abc 200 https://example.com/path?x=1"
    assert redactor.clean(text) is text
    assert redact_url("mailto:someone@example.com") == "mailto:someone@example.com"
