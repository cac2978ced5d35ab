"""What a kubelet would hand the operator container, reproduced for a local process.

The install test runs the operator on this machine (there is no kubelet) with the configuration
of the Deployment the chart installed: its env, the namespace from the downward API, and the
Secrets and ConfigMaps it mounts, read from the API and written to a local directory standing in
for the mount points.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.controlplane.cluster import ControlPlane

# Where the process listens is the test's business (free ports on 127.0.0.1), not the chart's.
LISTEN_SETTINGS = (
    "MATRIX_INVITE_BIND_ADDRESS",
    "MATRIX_INVITE_LIVENESS_PORT",
    "MATRIX_INVITE_METRICS_PORT",
)


def container_env(
    control_plane: ControlPlane, namespace: str, deployment: str, mounts_dir: Path
) -> dict[str, str]:
    """The operator container's environment, with mounted files materialised under mounts_dir."""
    body = json.loads(
        control_plane.kubectl("-n", namespace, "get", "deployment", deployment, "-o", "json").stdout
    )
    pod = body["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mount_points: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        local = mounts_dir / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        _materialise(control_plane, namespace, volumes[mount["name"]], local)
        mount_points[mount["mountPath"]] = local
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.namespace", f"unexpected downward API field {field}"
            value = namespace
        else:
            value = entry.get("value", "")
        for mount_path, local in mount_points.items():
            if value.startswith(mount_path + "/"):
                value = str(local) + value[len(mount_path) :]
        env[entry["name"]] = value
    for name in LISTEN_SETTINGS:
        env.pop(name, None)
    return env


def _materialise(
    control_plane: ControlPlane, namespace: str, volume: dict[str, Any], target: Path
) -> None:
    if "secret" in volume:
        kind, name = "secret", volume["secret"]["secretName"]
        source = volume["secret"]
    elif "configMap" in volume:
        kind, name = "configmap", volume["configMap"]["name"]
        source = volume["configMap"]
    else:
        return  # emptyDir: an empty directory is what the container gets
    data = json.loads(
        control_plane.kubectl("-n", namespace, "get", kind, name, "-o", "json").stdout
    ).get("data", {})
    for item in source.get("items") or [{"key": k, "path": k} for k in data]:
        raw = data[item["key"]]
        content = base64.b64decode(raw) if kind == "secret" else raw.encode()
        path = target / item["path"]
        path.write_bytes(content)
        path.chmod(0o600)
