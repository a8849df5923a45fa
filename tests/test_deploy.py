"""deploy/: the alert rules pass their promtool unit tests, the scrape config is valid, and
every PromQL expression of the dashboards and alerts is valid and names only metrics that
stemify exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stemify.observability.metrics import Metrics, StoreCollector, StoreSnapshot

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
ALERTS = {
    "HighErrorRate", "QueueBacklog", "SlowProcessing", "WorkerDown", "NoWorkers",
    "DiskSpaceLow", "HighApiLatency",
}  # fmt: skip
_METRIC = re.compile(r"\b(stemify_[a-zA-Z0-9_]+)\b")


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: run `make test` (it installs Debian's prometheus)")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def exported_names() -> set[str]:
    """Every sample name stemify's /metrics can carry, from the metric definitions."""
    families = list(Metrics().registry.collect())
    snapshot = StoreSnapshot(1, 1, 1.0, 1, free_bytes=1, total_bytes=2)
    families += list(StoreCollector(lambda: snapshot).collect())
    names: set[str] = set()
    for family in families:
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
        }[family.type]
        names |= {family.name + suffix for suffix in suffixes}
    return names


def dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    assert {rule["alert"] for rule in alert_rules()} == ALERTS
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr
    # Every alert has at least one test that expects it to fire.
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == ALERTS


def test_example_scrape_config_is_valid() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboards_use_valid_promql_on_exported_metrics(tmp_path: Path) -> None:
    exported = exported_names()
    assert {"stemify_jobs_finished_total", "stemify_job_stage_seconds_bucket"} <= exported
    assert [path.name for path in DASHBOARDS] == ["overview.json", "performance.json"]
    exprs: list[str] = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"], path.name
        for panel in dashboard["panels"]:
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
        found = list(dashboard_exprs(dashboard))
        assert found, path.name
        exprs += found
    exprs += [rule["expr"] for rule in alert_rules()]
    for expr in exprs:
        used = set(_METRIC.findall(expr))
        assert used, f"no stemify metric in {expr!r}"
        assert used <= exported, f"{expr!r} uses {sorted(used - exported)}, not exported"
    # promtool parses every dashboard query as a recording rule: a typo fails here.
    records = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
    rules = {"groups": [{"name": "dashboards", "rules": records}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_check_catches_a_metric_that_does_not_exist() -> None:
    """The name check above is not vacuous: a made-up metric is not in the exported set."""
    assert "stemify_jobs_total" not in exported_names()
    assert "stemify_queue_depth_total" not in exported_names()
