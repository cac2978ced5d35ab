"""What integration tests do to Invitations on the real API server: apply, read, wait, inspect."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import yaml

from tests.controlplane.cluster import ControlPlane

Body = dict[str, Any]


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.5)


class InvitationsApi:
    """kubectl on the test control plane, scoped to one namespace."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.cp = control_plane
        self.namespace = namespace

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = self.cp.kubectl("-n", self.namespace, *args, input=input, check=check)
        return result.stdout if result.returncode == 0 else result.stderr

    def manifest(self, name: str, **spec: Any) -> str:
        body = {
            "apiVersion": "matrix-invite.dev/v1alpha1",
            "kind": "Invitation",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        return yaml.safe_dump(body)

    def apply(self, name: str, **spec: Any) -> None:
        self.kubectl("apply", "-f", "-", input=self.manifest(name, **spec))

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.kubectl("patch", "invitation", name, "--type=merge", "-p", json.dumps({"spec": spec}))

    def get(self, name: str) -> Body | None:
        result = self.cp.kubectl(
            "-n", self.namespace, "get", "invitation", name, "-o", "json", check=False
        )
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        body: Body = json.loads(result.stdout)
        return body

    def status(self, name: str) -> Body:
        body = self.get(name)
        assert body is not None, f"invitation {name} is gone"
        status: Body = body.get("status") or {}
        return status

    def wait_for(
        self, name: str, predicate: Callable[[Body], bool], *, timeout: float = 30.0, what: str = ""
    ) -> Body:
        deadline = time.monotonic() + timeout
        last: Body | None = None
        while time.monotonic() < deadline:
            last = self.get(name)
            if last is not None and predicate(last):
                return last
            time.sleep(0.25)
        raise AssertionError(
            f"invitation {name} did not become {what or predicate} within {timeout}s; "
            f"last seen: {json.dumps((last or {}).get('status'), indent=1)}"
        )

    def wait_for_phase(self, name: str, phase: str, *, timeout: float = 30.0) -> Body:
        def reached(body: Body) -> bool:
            status = body.get("status") or {}
            return bool(
                status.get("phase") == phase
                and status.get("observedGeneration") == body["metadata"]["generation"]
            )

        return self.wait_for(name, reached, timeout=timeout, what=f"phase {phase}")

    def wait_gone(self, name: str, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get(name) is None:
                return
            time.sleep(0.25)
        raise AssertionError(f"invitation {name} still exists after {timeout}s")

    def secret(self, name: str) -> Body | None:
        result = self.cp.kubectl(
            "-n", self.namespace, "get", "secret", name, "-o", "json", check=False
        )
        if result.returncode != 0:
            return None
        body: Body = json.loads(result.stdout)
        return body

    def secret_token(self, secret_name: str) -> str:
        secret = self.secret(secret_name)
        assert secret is not None, f"secret {secret_name} missing"
        return base64.b64decode(secret["data"]["token"]).decode()

    def events(self, name: str) -> list[Body]:
        out = self.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        )
        items: list[Body] = json.loads(out)["items"]
        return items

    def event_reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]

    def wait_for_events(self, name: str, *reasons: str, timeout: float = 10.0) -> list[Body]:
        """Events are posted after the status write: wait until all `reasons` are there."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events(name)
            if set(reasons) <= {e["reason"] for e in events}:
                return events
            if time.monotonic() > deadline:
                seen = sorted({e["reason"] for e in events})
                raise AssertionError(f"events {reasons} not all posted on {name}; seen {seen}")
            time.sleep(0.25)


def condition(body: Body, type_: str) -> Body | None:
    for item in (body.get("status") or {}).get("conditions", []):
        if item["type"] == type_:
            found: Body = item
            return found
    return None
