"""`stemify storage check` as operators run it: one line per check, exit status 1 with the
failing step named, on a real SeaweedFS (the ``s3`` fixture) and on a local directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.processes import STEMIFY

pytestmark = pytest.mark.api

S3_STEPS = ["bucket", "put", "get", "head", "list", "copy", "multipart", "abort", "delete"]


def check(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STEMIFY, "storage", "check"],
        env={**os.environ, "STEMIFY_STORAGE_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def steps(output: str) -> list[tuple[str, str]]:
    """(status, step) of each result line."""
    return [
        (line[:4].strip(), line[6:].split()[0])
        for line in output.splitlines()
        if line.startswith(("ok  ", "FAIL"))
    ]


def bucket_is_empty(s3: Any) -> bool:
    listed = s3.client.list_objects_v2(Bucket=s3.name).get("Contents", [])
    pending = s3.client.list_multipart_uploads(Bucket=s3.name).get("Uploads", [])
    return not listed and not pending


def test_s3_check_passes_every_step_and_leaves_nothing(s3: Any) -> None:
    result = check(f"s3://{s3.name}/stemify/prod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert steps(result.stdout) == [("ok", step) for step in S3_STEPS]
    assert result.stdout.splitlines()[0] == f"checking s3://{s3.name}/stemify/prod"
    assert result.stdout.splitlines()[-1] == "storage ok"
    assert bucket_is_empty(s3)


def test_s3_check_of_a_missing_bucket(s3: Any) -> None:
    result = check(f"s3://{s3.name}-gone/stemify")
    assert result.returncode == 1
    assert steps(result.stdout) == [("FAIL", "bucket")]
    assert f"cannot access bucket s3://{s3.name}-gone: 404" in result.stdout
    assert "the storage check failed" in result.stderr


def test_s3_check_with_bad_credentials(s3: Any) -> None:
    wrong = "not-the-secret-" + s3.server.secret_key[:4]
    result = check(f"s3://{s3.name}/stemify", AWS_SECRET_ACCESS_KEY=wrong)
    assert result.returncode == 1
    assert steps(result.stdout) == [("FAIL", "bucket")]
    assert f"cannot access bucket s3://{s3.name}: 403" in result.stdout
    assert wrong not in result.stdout + result.stderr
    assert s3.server.access_key not in result.stdout + result.stderr


def test_s3_check_with_read_only_credentials_names_the_write(s3: Any) -> None:
    result = check(
        f"s3://{s3.name}/stemify",
        AWS_ACCESS_KEY_ID=s3.server.reader_access_key,
        AWS_SECRET_ACCESS_KEY=s3.server.reader_secret_key,
    )
    assert result.returncode == 1
    assert steps(result.stdout) == [("ok", "bucket"), ("FAIL", "put")]
    assert f"cannot write to s3://{s3.name}/stemify: AccessDenied" in result.stdout
    assert bucket_is_empty(s3)


def test_local_check(tmp_path: Path) -> None:
    result = check(str(tmp_path / "storage"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [s for _, s in steps(result.stdout)] == ["write", "read", "copy", "delete", "space"]
    assert all(status == "ok" for status, _ in steps(result.stdout))
    assert [p.name for p in (tmp_path / "storage").iterdir()] == [".tmp"]


def test_local_check_of_a_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    result = check(str(tmp_path / "a-file" / "storage"))
    assert result.returncode == 1
    assert steps(result.stdout) == [("FAIL", "setup")]
    assert f"cannot create the storage directory {tmp_path / 'a-file' / 'storage'}" in (
        result.stdout
    )


def runbook_json(key: str) -> dict[str, Any]:
    """The runbook's JSON block holding ``key`` (BUCKET and PREFIX as written there)."""
    text = (Path(__file__).parent.parent / "docs" / "operations" / "runbook.md").read_text()
    for block in re.findall(r"^```json\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        data = json.loads(block)
        if key in data:
            return dict(data)
    raise AssertionError(f"no JSON block with {key!r} in the runbook")


def test_the_runbooks_lifecycle_rules_are_accepted_by_s3(s3: Any) -> None:
    rules = json.loads(json.dumps(runbook_json("Rules")).replace("PREFIX/", "stemify/"))
    s3.client.put_bucket_lifecycle_configuration(Bucket=s3.name, LifecycleConfiguration=rules)
    applied = s3.client.get_bucket_lifecycle_configuration(Bucket=s3.name)["Rules"]
    by_id = {rule["ID"]: rule for rule in applied}
    abort = by_id["stemify-abort-incomplete-uploads"]
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert abort["Filter"] == {"Prefix": "stemify/"}
    assert by_id["stemify-expiry-backstop"]["Expiration"] == {"Days": 7}


def test_the_runbooks_policy_names_every_action_the_check_needs() -> None:
    policy = runbook_json("Statement")
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert actions == {
        "s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetObject", "s3:PutObject",
        "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
    }  # fmt: skip
