"""What integration tests do to Invitations on the real API server: apply, read, wait, inspect.

Writes a user makes go through kubectl (`apply`, `kubectl(...)`); reads and polls go through one
HTTP client per control plane with the admin's credentials, since a kubectl fork per poll costs
more CPU than the operator under test on a two-core machine.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import weakref
from collections.abc import Callable
from typing import Any

import httpx
import yaml

from tests.controlplane.cluster import ControlPlane

Body = dict[str, Any]

GROUP_VERSION = "matrix-invite.dev/v1alpha1"
POLL_SECONDS = 0.1  # one GET on loopback: cheap enough to ask often

# One client (and connection pool) per control plane; it goes when its control plane goes.
_CLIENTS: weakref.WeakKeyDictionary[ControlPlane, httpx.Client] = weakref.WeakKeyDictionary()


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


def api_client(control_plane: ControlPlane) -> httpx.Client:
    """An HTTP client to the control plane's API server as its admin (the admin kubeconfig's
    server, CA and token)."""
    client = _CLIENTS.get(control_plane)
    if client is None:
        config = json.loads(control_plane.kubeconfig_path.read_text(encoding="utf-8"))
        (cluster,) = config["clusters"]
        (user,) = config["users"]
        ca = base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode()
        client = httpx.Client(
            base_url=cluster["cluster"]["server"],
            headers={"Authorization": f"Bearer {user['user']['token']}"},
            verify=ssl.create_default_context(cadata=ca),
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        _CLIENTS[control_plane] = client
    return client


class InvitationsApi:
    """The test control plane, scoped to one namespace: kubectl for writes, HTTP for reads."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.cp = control_plane
        self.namespace = namespace
        self.http = api_client(control_plane)

    def read(self, path: str, params: dict[str, str] | None = None) -> Body | None:
        """GET an API path (JSON), None when it does not exist."""
        try:
            answer = self.http.get(path, params=params)
        except httpx.TransportError:
            # A pooled connection the API server closed (e.g. it was restarted): once more,
            # on a new connection.
            answer = self.http.get(path, params=params)
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise AssertionError(f"GET {path}: {answer.status_code} {answer.text}")
        body: Body = answer.json()
        return body

    def _namespaced(self, resource: str, name: str = "", *, core: bool = False) -> str:
        prefix = "/api/v1" if core else f"/apis/{GROUP_VERSION}"
        path = f"{prefix}/namespaces/{self.namespace}/{resource}"
        return f"{path}/{name}" if name else path

    def listed(self) -> list[Body]:
        """Every Invitation of the namespace (`kubectl get invitations -o json`'s items)."""
        listed = self.read(self._namespaced("invitations"))
        assert listed is not None, f"no Invitations resource in {self.namespace}"
        items: list[Body] = listed["items"]
        return items

    def dump(self, resource: str, *, core: bool = False) -> str:
        """The namespace's objects of a kind as the API server sends them, for text searches."""
        answer = self.http.get(self._namespaced(resource, core=core))
        assert answer.status_code == 200, f"GET {resource}: {answer.status_code} {answer.text}"
        return answer.text

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
        answer = self.http.patch(
            self._namespaced("invitations", name),
            content=json.dumps({"spec": spec}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert answer.status_code == 200, f"patch {name}: {answer.status_code} {answer.text}"

    def get(self, name: str) -> Body | None:
        return self.read(self._namespaced("invitations", name))

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
        return self.read(self._namespaced("secrets", name, core=True))

    def secret_token(self, secret_name: str) -> str:
        secret = self.secret(secret_name)
        assert secret is not None, f"secret {secret_name} missing"
        return base64.b64decode(secret["data"]["token"]).decode()

    def events(self, name: str) -> list[Body]:
        listed = self.read(
            self._namespaced("events", core=True),
            params={"fieldSelector": f"involvedObject.name={name}"},
        )
        assert listed is not None
        items: list[Body] = listed["items"]
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
