"""A kubeconfig exec plugin for tests (client.authentication.k8s.io/v1), and its kubeconfig.

Run as a script it prints the n-th status of its plan (the last one again once the plan is
used up) as an ExecCredential, and appends one line per call to its calls file: when it ran and
the `KUBERNETES_EXEC_INFO` it was given. A status may say `expiresInSeconds` instead of an
`expirationTimestamp`: counted from the call. Both paths come from the environment the
kubeconfig's `exec.env` sets, so the kubeconfig's `env` is exercised too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # run as a script, it imports nothing of the tests
    from tests.controlplane.cluster import ControlPlane

API_VERSION = "client.authentication.k8s.io/v1"


def exec_kubeconfig(
    control_plane: ControlPlane, name: str, plan: Sequence[Mapping[str, Any]], directory: Path
) -> tuple[Path, Path]:
    """A kubeconfig whose user runs this plugin with `plan`; returns it and the calls file."""
    plan_path, calls_path = directory / f"{name}-plan.json", directory / f"{name}-calls"
    plan_path.write_text(json.dumps(list(plan)), encoding="utf-8")
    stanza = {
        "exec": {
            "apiVersion": API_VERSION,
            "command": sys.executable,
            "args": [str(Path(__file__).resolve())],
            "env": [
                {"name": "EXEC_PLUGIN_PLAN", "value": str(plan_path)},
                {"name": "EXEC_PLUGIN_CALLS", "value": str(calls_path)},
            ],
            "interactiveMode": "Never",
            "provideClusterInfo": True,
        }
    }
    return control_plane.kubeconfig_with_user(name, stanza), calls_path


def calls(path: Path) -> list[dict[str, Any]]:
    """Every call so far: `calledAt` (RFC 3339) and `execInfo` (its KUBERNETES_EXEC_INFO)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def main() -> int:
    plan = json.loads(Path(os.environ["EXEC_PLUGIN_PLAN"]).read_text(encoding="utf-8"))
    calls_path = Path(os.environ["EXEC_PLUGIN_CALLS"])
    done = len(calls(calls_path))
    now = dt.datetime.now(dt.UTC)
    call = {
        "calledAt": now.isoformat(),
        "execInfo": json.loads(os.environ.get("KUBERNETES_EXEC_INFO", "{}")),
    }
    with calls_path.open("a", encoding="utf-8") as record:
        record.write(json.dumps(call) + "\n")
    status = dict(plan[min(done, len(plan) - 1)])
    if "expiresInSeconds" in status:
        expiry = now + dt.timedelta(seconds=float(status.pop("expiresInSeconds")))
        status["expirationTimestamp"] = expiry.isoformat()
    print(json.dumps({"apiVersion": API_VERSION, "kind": "ExecCredential", "status": status}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
