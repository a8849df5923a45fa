"""schemathesis against the app's own OpenAPI schema on a real server: whatever the schema
allows a client to send, the answer is never a 5xx and always matches the schema.

Driven through hypothesis directly: schemathesis' pytest plugin does not run on pytest 9."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import checks
from support.live import finished_job, live_app, settings_for

from stemify.clock import now_utc
from stemify.jobs.model import Job, JobSpec

pytestmark = pytest.mark.api

MakeAudio = Callable[..., Path]
# Bounded so the whole run fits in well under a minute on two shared cores.
EXAMPLES = 25
# No 5xx, and every status, content type, header and body as the schema declares. Not
# positive_data_acceptance: a schema cannot say that a model name must be installed.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


def check_operation(operation: Any) -> None:
    @SETTINGS
    @hypothesis.given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(timeout=20, checks=CHECKS)

    run()


def test_api_keeps_to_its_schema(tmp_path: Path, model_dir: Path, make_audio: MakeAudio) -> None:
    with live_app(settings_for(tmp_path, model_dir), auth_required=False) as live:
        # Jobs to list (queued and finished), so job bodies are checked against the schema.
        finished_job(live, make_audio)
        queued = Job(id="0" * 32, spec=JobSpec(model="tiny"), source="url", created_at=now_utc())
        live.store.add(queued)
        schema = schemathesis.openapi.from_url(f"{live.root}/openapi.json")
        failures: list[str] = []
        labels = []
        for result in schema.get_all_operations():
            operation = result.ok()
            labels.append(operation.label)
            try:
                check_operation(operation)
            except Exception as exc:  # every operation is tried; all failures are reported
                failures.append(f"{operation.label}: {exc}")
    assert "POST /api/v1/jobs" in labels and "GET /api/v1/usage" in labels
    assert not failures, "\n\n".join(failures)
