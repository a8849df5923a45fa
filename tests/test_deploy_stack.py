"""deploy/compose.yaml and what it mounts, without running it (tests/test_compose.py runs it):
the Prometheus config it gives Prometheus is valid and loads the alert rules, Grafana's
provisioning points at the dashboards, the env file example names every variable the file
uses, and the settings it passes are ones stemify knows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "compose.yaml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_prometheus_config_of_the_stack_is_valid_and_loads_the_rules() -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: run `make test` (it installs Debian's prometheus)")
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus/compose.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    checked = subprocess.run(
        ["promtool", "check", "config", "compose.yml"],
        cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "7 rules found" in checked.stdout + checked.stderr


def test_grafana_is_provisioned_with_the_data_source_the_dashboards_use() -> None:
    grafana = compose()["services"]["grafana"]
    assert "./grafana:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    providers = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "stemify.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    (source,) = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for dashboard in (DEPLOY / "grafana").glob("*.json"):
        # ${DS_PROMETHEUS} resolves through a data source variable when provisioned (there
        # is no import to fill it in).
        variables = yaml.safe_load(dashboard.read_text())["templating"]["list"]
        assert {"name": "DS_PROMETHEUS", "type": "datasource", "query": "prometheus"}.items() <= (
            next(v for v in variables if v["name"] == "DS_PROMETHEUS").items()
        ), dashboard.name


def test_the_env_file_example_names_every_variable_the_file_needs() -> None:
    text = COMPOSE.read_text()
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", text))  # no default: the env file's
    example = (DEPLOY / ".env.example").read_text()
    given = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    assert needed == given, (needed, given)
    assert "/deploy/.env" in (DEPLOY.parent / ".gitignore").read_text().splitlines()


def test_the_stemify_services_share_one_image_and_workers_outlive_their_grace() -> None:
    from stemify.settings import Settings

    services = compose()["services"]
    stemify = [s for s in services.values() if s.get("image", "").startswith("${STEMIFY_IMAGE")]
    assert len(stemify) == 3  # api, worker, s3-bucket
    assert [s for s in stemify if "build" in s] == [services["api"]]
    environment = services["worker"]["environment"]
    known = {f"STEMIFY_{field.upper()}" for field in Settings.model_fields}
    assert {k for k in environment if k.startswith("STEMIFY_")} <= known
    grace = float(environment["STEMIFY_SHUTDOWN_GRACE_S"])
    assert int(services["worker"]["stop_grace_period"].removesuffix("s")) > grace
    # Volumes for the data that lasts; the models are in the image, under no volume.
    assert {"postgres-data", "s3-data", "prometheus-data", "grafana-data"} <= set(
        compose()["volumes"]
    )
    for service in stemify:
        assert not any("/opt/stemify/models" in v for v in service.get("volumes", []))
