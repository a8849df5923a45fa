"""deploy/k8s/keda/: the ScaledObject's shape, and its trigger key is the one the code writes
(built from the same constants, and counted on a real Redis after a real enqueue), so the
manifest and the queue cannot drift apart; the drain patch outlasts the shutdown grace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from support.processes import redis_server

from stemify.queue.transport import RedisQueue, dramatiq_namespace, make_broker, messages_key
from stemify.settings import Settings

KEDA = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "keda"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KEDA / name).read_text()) if d]


def scaled_object() -> dict[str, Any]:
    (found,) = [d for d in documents("scaledobject.yaml") if d["kind"] == "ScaledObject"]
    return found


def redis_trigger() -> dict[str, Any]:
    (trigger,) = scaled_object()["spec"]["triggers"]
    assert trigger["type"] == "redis"
    found: dict[str, Any] = trigger
    return found


@pytest.mark.unit
def test_kustomization_is_an_overlay_of_base() -> None:
    (kustomization,) = documents("kustomization.yaml")
    assert kustomization["resources"] == ["../base", "scaledobject.yaml"]
    (patch,) = kustomization["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": "stemify-worker"}
    assert (KEDA / patch["path"]).is_file()
    assert not (KEDA / "base").exists()


@pytest.mark.unit
def test_scaled_object_shape() -> None:
    found = scaled_object()
    assert found["apiVersion"] == "keda.sh/v1alpha1"
    spec = found["spec"]
    assert spec["scaleTargetRef"] == {"name": "stemify-worker"}
    assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["pollingInterval"] > 0 and spec["cooldownPeriod"] > 0
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    down = behavior["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 60
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    metadata = redis_trigger()["metadata"]
    # One job per pod by default: the target is one message per replica.
    assert int(metadata["listLength"]) == Settings().worker_concurrency
    assert metadata["activationListLength"] == "0"
    (auth,) = [d for d in documents("scaledobject.yaml") if d["kind"] == "TriggerAuthentication"]
    assert redis_trigger()["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"address", "password"}


@pytest.mark.unit
def test_trigger_key_is_the_queue_the_code_uses() -> None:
    key = messages_key(dramatiq_namespace(Settings().redis_prefix))
    assert redis_trigger()["metadata"]["listName"] == key == "stemify-dramatiq:stemify-jobs.msgs"


@pytest.mark.service
def test_trigger_key_counts_waiting_and_taken_messages_on_redis() -> None:
    """HLEN of the manifest's key after real enqueues, and after a worker-style fetch: the
    taken message still counts (it is the job running)."""
    key = redis_trigger()["metadata"]["listName"]
    with redis_server() as url:
        queue = RedisQueue(make_broker(url, namespace=dramatiq_namespace(Settings().redis_prefix)))
        client = redis.Redis.from_url(url)
        try:
            assert client.type(key) == b"none"
            queue.enqueue("job-a")
            queue.enqueue("job-b")
            assert client.type(key) == b"hash" and client.hlen(key) == 2
            consumer = queue.broker.consume("stemify-jobs", prefetch=1, timeout=1000)
            message = next(m for m in consumer if m is not None)
            assert client.hlen(key) == 2  # taken, not acked: still counted
            consumer.ack(message)
            consumer.close()
            assert client.hlen(key) == 1
            assert queue.pending() == {"job-a", "job-b"} - {message.args[0]}
        finally:
            queue.close()
            client.close()


@pytest.mark.unit
def test_drain_patch_outlasts_the_shutdown_grace() -> None:
    (patch,) = documents("worker-drain.yaml")
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", "stemify-worker")
    pod = patch["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= Settings().shutdown_grace_s + 30
    (container,) = pod["containers"]
    assert container["name"] == "worker"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["/bin/sh", "-c", "kill -USR1 1"]
    from stemify.worker.supervisor import RETIRE_SIGNAL

    assert RETIRE_SIGNAL.name == "SIGUSR1"
