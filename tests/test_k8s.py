"""deploy/k8s/base: every manifest is valid against the Kubernetes schemas (PyPI
kubernetes-validate), as kustomize renders it (kubectl's, when installed) or as the files its
kustomization.yaml lists; and the facts the runbook relies on hold."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit

BASE = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "base"
KUBERNETES = "1.30.0"  # the oldest release still maintained upstream when this was written


def listed_files() -> list[dict[str, Any]]:
    """The documents of the files kustomization.yaml lists, as they are on disk."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return documents


def rendered() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        return listed_files()
    done = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("source", ["rendered", "files"])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(source: str) -> None:
    documents = rendered() if source == "rendered" else listed_files()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
    assert kinds == [
        "ConfigMap/stemify", "Deployment/stemify-api", "Deployment/stemify-worker",
        "Ingress/stemify", "PodDisruptionBudget/stemify-api", "PodDisruptionBudget/stemify-worker",
        "Secret/stemify", "Service/stemify-api",
    ]  # fmt: skip
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


@pytest.mark.parametrize("breakage", ["a string for a number", "a misspelt field"])
def test_the_validator_refuses_a_broken_manifest(breakage: str) -> None:
    worker = copy.deepcopy(by_kind(listed_files(), "Deployment", "stemify-worker"))
    spec = worker["spec"]["template"]["spec"]
    if breakage == "a string for a number":
        spec["terminationGracePeriodSeconds"] = "sixty"
    else:
        spec["containers"][0]["livenesProbe"] = spec["containers"][0].pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES, strict=True)


def test_workers_outlive_their_shutdown_grace_and_keep_the_names_overlays_use() -> None:
    documents = rendered()
    settings = by_kind(documents, "ConfigMap", "stemify")["data"]
    worker = by_kind(documents, "Deployment", "stemify-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > float(settings["STEMIFY_SHUTDOWN_GRACE_S"])
    (container,) = worker["containers"]
    assert container["name"] == "worker" and container["args"] == ["worker"]
    # The worker's probes go to the port its metrics server listens on.
    assert container["ports"][0]["containerPort"] == int(settings["STEMIFY_WORKER_METRICS_PORT"])
    api = by_kind(documents, "Deployment", "stemify-api")["spec"]["template"]["spec"]
    for spec in (api, worker):
        (one,) = spec["containers"]
        assert one["readinessProbe"] and one["livenessProbe"], one["name"]
        assert {"cpu", "memory"} <= set(one["resources"]["requests"]), one["name"]
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
        assert {"configMapRef": {"name": "stemify"}} in one["envFrom"]
        assert {"secretRef": {"name": "stemify"}} in one["envFrom"]
    assert api["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/api/v1/ready"
    assert api["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/api/v1/health"


def test_every_setting_of_the_configmap_and_secret_is_one_stemify_knows() -> None:
    from stemify.settings import Settings

    documents = listed_files()
    names = set(by_kind(documents, "ConfigMap", "stemify")["data"])
    names |= set(by_kind(documents, "Secret", "stemify")["stringData"])
    known = {f"STEMIFY_{field.upper()}" for field in Settings.model_fields}
    unknown = {n for n in names if n.startswith("STEMIFY_")} - known
    assert not unknown, unknown
