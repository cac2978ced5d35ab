"""What integration tests do to Invitations on the real API server: apply, read, wait, inspect.

Writes a user makes go through kubectl (`apply`, `kubectl(...)`); reads and polls go straight to
the API server (`ControlPlane.api`), since a kubectl fork per poll costs more CPU than the
operator under test on a two-core machine.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import yaml

from tests.controlplane.cluster import ControlPlane

Body = dict[str, Any]

GROUP_VERSION = "matrix-invite.dev/v1alpha1"
POLL_SECONDS = 0.1  # one GET on loopback: cheap enough to ask often


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(POLL_SECONDS)


class InvitationsApi:
    """The test control plane, scoped to one namespace: kubectl for writes, the API for reads."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.cp = control_plane
        self.namespace = namespace

    def path(self, resource: str, name: str = "", *, core: bool = False, **query: str) -> str:
        """The API path of a namespaced resource (or one object of it), with a query."""
        prefix = "/api/v1" if core else f"/apis/{GROUP_VERSION}"
        path = f"{prefix}/namespaces/{self.namespace}/{resource}" + (f"/{name}" if name else "")
        return f"{path}?{urllib.parse.urlencode(query)}" if query else path

    def listed(self, resource: str = "invitations", *, core: bool = False) -> list[Body]:
        """Every object of a kind in the namespace (Invitations: `kubectl get inv -o json`)."""
        answer = self.cp.get(self.path(resource, core=core))
        assert answer is not None, f"no {resource} resource in {self.namespace}"
        items: list[Body] = answer["items"]
        return items

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
        """A JSON merge patch of the spec, as `kubectl patch --type=merge` sends it."""
        patched = self.cp.api(
            "PATCH",
            self.path("invitations", name),
            {"spec": spec},
            content_type="application/merge-patch+json",
        )
        assert patched is not None, f"invitation {name} is gone"

    def get(self, name: str) -> Body | None:
        return self.cp.get(self.path("invitations", name))

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
            time.sleep(POLL_SECONDS)
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
            time.sleep(POLL_SECONDS)
        raise AssertionError(f"invitation {name} still exists after {timeout}s")

    def secret(self, name: str) -> Body | None:
        return self.cp.get(self.path("secrets", name, core=True))

    def secret_token(self, secret_name: str) -> str:
        secret = self.secret(secret_name)
        assert secret is not None, f"secret {secret_name} missing"
        return base64.b64decode(secret["data"]["token"]).decode()

    def events(self, name: str) -> list[Body]:
        path = self.path("events", core=True, fieldSelector=f"involvedObject.name={name}")
        answer = self.cp.get(path)
        assert answer is not None
        items: list[Body] = answer["items"]
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
            time.sleep(POLL_SECONDS)


def condition(body: Body, type_: str) -> Body | None:
    for item in (body.get("status") or {}).get("conditions", []):
        if item["type"] == type_:
            found: Body = item
            return found
    return None
