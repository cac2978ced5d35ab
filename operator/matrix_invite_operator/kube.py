"""Secrets and Invitation status through the Kubernetes API, over one injected httpx client.

Kopf watches Invitations; everything we write ourselves (the token Secret, status patches
between steps, status from the sync pass) goes through `KubeApi`. Who we are to the API server
is not decided here: `kube_http_client` sends every request as the identity of the one
`kube_identity.KubeLogin` that Kopf's login handler uses too (why we log in ourselves rather
than through Kopf's or a client library's login: kube_identity.py and docs/architecture.md).
"Already exists" is handled here, in one place.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from .errors import (
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeRejected,
    KubeUnavailable,
    SecretConflict,
)
from .formats import retry_after_seconds
from .kube_identity import KubeLogin, KubeTransport
from .models import GROUP, PLURAL, VERSION

logger = logging.getLogger(__name__)

SECRET_TOKEN_KEY = "token"  # noqa: S105 - the key name, not a value
MANAGED_BY = "matrix-invite-operator"


class _NoCookies(httpx.Cookies):
    """Keeps none. The API server sets none, yet httpx wraps every answer in urllib's request
    and response types to look for them: 2 % of the operator's CPU in a burst (issue 24)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _KubeHttpClient(httpx.AsyncClient):
    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("the Kubernetes client keeps no cookies")


async def kube_http_client(login: KubeLogin, *, timeout_seconds: float = 30.0) -> httpx.AsyncClient:
    """A client for the API server of `login`'s identity, sending every request as it.

    Logs in first (once): the base URL is the identity's server, and a configuration that
    cannot log in at all fails here, at startup.
    """
    identity = await login.identity()
    return _KubeHttpClient(
        base_url=identity.server,
        transport=KubeTransport(login),
        timeout=httpx.Timeout(timeout_seconds, connect=10.0),
        headers={"User-Agent": MANAGED_BY},
        trust_env=False,  # as Kopf: no proxy or CA bundle from the environment
    )


class KubeApi:
    """The few Kubernetes calls the reconciler makes, with errors mapped to our tree."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _request(
        self, method: str, path: str, *, json: Any = None, content_type: str | None = None
    ) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if content_type else None
        try:
            response = await self._client.request(method, path, json=json, headers=headers)
        except httpx.TransportError as exc:
            raise KubeUnavailable(
                f"Kubernetes API unreachable ({type(exc).__name__})", retry_after=5
            ) from exc
        if response.status_code == 404:
            raise KubeNotFound(f"{method} {path}: not found")
        if response.status_code == 403:
            raise KubeForbidden(
                f"RBAC forbids {method} {path}: the operator's Role lacks this permission"
            )
        if response.status_code == 409:
            raise _AlreadyExists(path)
        if response.status_code == 429 or response.status_code >= 500:
            raise KubeUnavailable(
                f"Kubernetes API answered {response.status_code} to {method} {path}",
                retry_after=retry_after_seconds(response.headers.get("Retry-After"), 5.0),
            )
        if response.status_code >= 400:
            raise KubeRejected(
                f"Kubernetes API answered {response.status_code} to {method} {path}: "
                f"{_status_message(response)}"
            )
        result: dict[str, Any] = response.json()
        return result

    # --- the token Secret ---

    async def read_token_secret(
        self, namespace: str, name: str, owner_uid: str
    ) -> SecretStr | None:
        """The token in our Secret, or None if there is no such Secret yet."""
        try:
            secret = await self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except KubeNotFound:
            return None
        return _token_from(secret, owner_uid)

    async def create_token_secret(
        self, namespace: str, name: str, token: SecretStr, owner: dict[str, Any]
    ) -> SecretStr:
        """Create the Secret; if it exists already (a retry), return what it holds instead."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
                "ownerReferences": [owner],
            },
            "data": {SECRET_TOKEN_KEY: _b64(token)},
        }
        try:
            await self._request("POST", f"/api/v1/namespaces/{namespace}/secrets", json=body)
        except _AlreadyExists:
            existing = await self.read_token_secret(namespace, name, owner["uid"])
            if existing is None:  # deleted between our POST and GET: let the retry create it
                raise KubeUnavailable(
                    "the token Secret vanished while being created", retry_after=1
                ) from None
            return existing
        return token

    async def replace_token(
        self, namespace: str, name: str, token: SecretStr, owner_uid: str
    ) -> None:
        secret = await self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        _token_from(secret, owner_uid)  # ownership check before we overwrite anything
        patch = {
            "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
            "data": {SECRET_TOKEN_KEY: _b64(token)},
        }
        try:
            await self._request(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/secrets/{name}",
                json=patch,
                content_type="application/merge-patch+json",
            )
        except _AlreadyExists as exc:  # 409 here means a concurrent writer: retry from the top
            raise KubeUnavailable(
                "the token Secret changed while being replaced", retry_after=1
            ) from exc

    # --- Invitations ---

    async def patch_invitation_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None
    ) -> dict[str, Any]:
        """Merge `status` in, only if the object is still at `resource_version`.

        Raises `KubeConflict` when it changed since: the caller decided on an older object and
        must read again. Without a version (a body that carried none) the patch always wins.
        """
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return await self._request(
                "PATCH",
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
                json=body,
                content_type="application/merge-patch+json",
            )
        except _AlreadyExists as exc:  # 409 on a patch: the resourceVersion precondition failed
            raise KubeConflict(f"{namespace}/{name} changed since it was read") from exc

    async def get_invitation(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request(
                "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
            )
        except KubeNotFound:
            return None

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", json=body)

    # --- the election Lease (leadership.py) ---

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"{_leases(namespace)}/{name}")
        except KubeNotFound:
            return None

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The Lease as created; None when it exists already (another candidate was first)."""
        try:
            return await self._request("POST", _leases(namespace), json=body)
        except _AlreadyExists:
            return None

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The Lease as written; None when it changed since the `resourceVersion` in `body`."""
        try:
            return await self._request("PUT", f"{_leases(namespace)}/{name}", json=body)
        except _AlreadyExists:
            return None


class KubeEvents:
    """Events on Invitations (`kubectl describe`), posted by us so that the sync loop can post too.

    Posting is best effort: a lost Event must never fail or retry a reconcile step.
    """

    def __init__(self, api: KubeApi, *, component: str = MANAGED_BY) -> None:
        self._api = api
        self._component = component
        self._instance = os.environ.get("HOSTNAME", component)

    async def normal(self, invitation: EventTarget, reason: str, message: str) -> None:
        await self._post(invitation, "Normal", reason, message)

    async def warning(self, invitation: EventTarget, reason: str, message: str) -> None:
        await self._post(invitation, "Warning", reason, message)

    async def _post(self, target: EventTarget, type_: str, reason: str, message: str) -> None:
        reference = target.reference()
        meta = reference["metadata"]
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": reference["apiVersion"],
                "kind": reference["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._api.create_event(meta["namespace"], body)
        except KubeError as exc:
            logger.warning(
                "could not post Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc
            )


class EventTarget(Protocol):
    def reference(self) -> dict[str, Any]: ...


class _AlreadyExists(KubeConflict):
    """409: on a create, the object exists; on a conditioned write, it changed meanwhile."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: changed or created by someone else meanwhile; retrying")


def _leases(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def _b64(token: SecretStr) -> str:
    return base64.b64encode(token.get_secret_value().encode()).decode()


def _token_from(secret: dict[str, Any], owner_uid: str) -> SecretStr:
    name = secret["metadata"]["name"]
    owners = secret["metadata"].get("ownerReferences") or []
    if not any(ref.get("uid") == owner_uid for ref in owners):
        raise SecretConflict(
            f"Secret {name} exists but is not owned by this Invitation; "
            "rename or delete it, the operator never takes over a Secret it did not create"
        )
    encoded = (secret.get("data") or {}).get(SECRET_TOKEN_KEY)
    if not encoded:
        raise SecretConflict(
            f"Secret {name} has no '{SECRET_TOKEN_KEY}' key; delete it to start over"
        )
    return SecretStr(base64.b64decode(encoded).decode())


def _status_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text[:300]
