"""What the node tests ask the cluster: Pods of a release, their events and logs, the kubelet's
probe counters, helm against the node's control plane.

Owns the waiting and the failure reports: when a Pod does not come up, the assertion message
carries its status, its events and its container's log, so a red run says why.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.controlplane.cluster import ApiError, ControlPlane
from tests.deploy.chart import CHART_DIR, helm, values_file
from tests.node.node import NODE_NAME

Body = dict[str, Any]
RELEASE = "matrix-invite-operator"
CRD_NAME = "invitations.matrix-invite.dev"
SELECTOR = f"app.kubernetes.io/name={RELEASE},app.kubernetes.io/instance={RELEASE}"


def pods(cp: ControlPlane, namespace: str, selector: str = SELECTOR) -> list[Body]:
    answer = cp.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
    assert answer is not None
    items: list[Body] = answer["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: Body) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def events(cp: ControlPlane, namespace: str, name: str) -> list[Body]:
    answer = cp.get(
        f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name={name}"
    )
    assert answer is not None
    items: list[Body] = answer["items"]
    return items


def _get_text(cp: ControlPlane, path: str) -> str:
    """A GET whose answer is text, not JSON (logs, metrics), as admin."""
    context = ssl.create_default_context(cafile=str(cp.workdir / "apiserver-certs/apiserver.crt"))
    port = int(cp.server_url.rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {cp.admin_token}"})
        answer = conn.getresponse()
        text = answer.read().decode(errors="replace")
    finally:
        conn.close()
    if answer.status != 200:
        raise ApiError("GET", path, answer.status, text)
    return text


def log(cp: ControlPlane, namespace: str, pod: str, *, previous: bool = False) -> str:
    """The container's log, read from the kubelet through the API server."""
    query = "?previous=true" if previous else ""
    return _get_text(cp, f"/api/v1/namespaces/{namespace}/pods/{pod}/log{query}")


def report(cp: ControlPlane, namespace: str, selector: str = SELECTOR) -> str:
    """Status, events and log tail of every Pod of the selector, for an assertion message."""
    lines = []
    for pod in pods(cp, namespace, selector):
        name = pod["metadata"]["name"]
        lines.append(f"--- pod {name}: {json.dumps(pod.get('status', {}), indent=1)[:3000]}")
        lines += [f"event {e['reason']}: {e['message']}" for e in events(cp, namespace, name)]
        try:
            lines.append(f"log:\n{log(cp, namespace, name)[-3000:]}")
        except (OSError, ApiError) as exc:
            lines.append(f"log unavailable: {exc}")
    return "\n".join(lines)


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, explain: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}\n{explain()}")
        time.sleep(0.5)


def install(
    cp: ControlPlane,
    values: Mapping[str, Any],
    namespace: str,
    *,
    command: str = "install",
    timeout: int = 240,
) -> str:
    """``helm install`` (or ``upgrade``) of the chart from this repository; helm's output.

    The CRD is cluster-wide: when another release on the node (another test) or Flux already
    applied it, this one installs without it (``crds.enabled: false``), as a second release in a
    cluster must.
    """
    crd = cp.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
    owner = ((crd or {}).get("metadata", {}).get("annotations") or {}).get(
        "meta.helm.sh/release-namespace"
    )
    if crd is not None and owner != namespace:
        values = {**values, "crds": {**values.get("crds", {}), "enabled": False}}
    with tempfile.TemporaryDirectory(prefix="node-values-") as tmp:
        result = helm(
            command,
            RELEASE,
            str(CHART_DIR),
            "--namespace",
            namespace,
            "--values",
            str(values_file(values, Path(tmp))),
            "--wait",
            f"--timeout={timeout}s",
            kubeconfig=cp.kubeconfig_path,
            check=False,
            timeout=timeout + 30,
        )
    if result.returncode != 0:
        raise AssertionError(f"helm {command} failed: {result.stderr}\n{report(cp, namespace)}")
    return result.stdout


def probe_counts(cp: ControlPlane, pod: str, probe: str = "Liveness") -> dict[str, float]:
    """The kubelet's own ``prober_probe_total`` for one Pod, by result (read through the API
    server's node proxy)."""
    text = _get_text(cp, f"/api/v1/nodes/{NODE_NAME}/proxy/metrics/probes")
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("prober_probe_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("pod") == pod and labels.get("probe_type") == probe:
            counts[labels["result"]] = counts.get(labels["result"], 0) + float(line.split()[-1])
    return counts


def restricted_pod(name: str, namespace: str, image: str, command: list[str]) -> Body:
    """A one-shot Pod that the restricted Pod Security level admits."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def run_pod(cp: ControlPlane, pod: Body, timeout: float = 90) -> str:
    """Create the Pod, wait until it ran to completion, return its log."""
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    cp.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def finished() -> bool:
        body = cp.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return body is not None and body["status"].get("phase") in ("Succeeded", "Failed")

    wait_for(f"pod {name} finished", finished, timeout, lambda: report(cp, namespace, ""))
    body = cp.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    assert body is not None
    output = log(cp, namespace, name)
    assert body["status"]["phase"] == "Succeeded", output
    return output


@contextlib.contextmanager
def explained(cp: ControlPlane, namespace: str, selector: str = SELECTOR) -> Iterator[None]:
    """A failed assertion inside carries the Pods' status, events and logs."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{report(cp, namespace, selector)}") from exc
