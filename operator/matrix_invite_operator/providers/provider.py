"""`Provider`: everything one token backend brings, built as one object, and the HTTP client
each provider owns (explicit timeouts, TLS verified against the system CAs or a bundle, over
`coalesced_http`'s transport as the Kubernetes client)."""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..backends import AccountFinder, TokenBackend
from ..coalesced_http import coalesced_transport
from ..onboarding import ActingSessions, Observer
from ..settings import Settings
from ..sign_up import SignUpFacts, SiteWatch
from .findings import Finding

RequestObserver = Callable[[str, str, str, float], None]
"""Called after each backend request with (endpoint template, method, outcome, seconds)."""

#: Connections each peer's client keeps open; `runtime.CONCURRENT_RECONCILES` follows it.
MAS_CONNECTIONS = 10


@dataclass
class Provider:
    """One backend's parts. `runtime` wires these into `Dependencies` without asking which
    backend it got; the provider closes what it opened (`aclose`)."""

    name: str  # "MAS", "Synapse": for messages
    backend: TokenBackend  # the token store
    accounts: AccountFinder  # who signed up with an address (onboarding)
    sign_up: SiteWatch  # what the mail says about sign-up, refreshed from the backend if it can
    sessions: ActingSessions | None  # access tokens to act in Matrix; None: cannot act
    http: httpx.AsyncClient | None = None  # the client it owns

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self.http is not None:
            await self.http.aclose()


class ProviderBuilder(Protocol):
    """Builds a backend's provider; raises ConfigurationError when the settings cannot work."""

    def __call__(
        self,
        settings: Settings,
        *,
        on_request: RequestObserver | None = None,
        observe: Observer | None = None,
    ) -> Provider: ...


@dataclass(frozen=True)
class ProviderKind:
    """A backend as the settings name it: how to build its provider, and what the commands
    around the operator (doctor, render-mail, the invite page) need from it without building
    one. Nothing outside the backend's own modules asks which backend it is."""

    name: str
    build: ProviderBuilder
    url: Callable[[Settings], object]  # where it is, for messages
    sign_up_facts: Callable[[Settings], SignUpFacts]  # what the settings alone say about sign-up
    read_sign_up: Callable[[Settings], Coroutine[Any, Any, SignUpFacts]]  # as `run` learns it
    doctor_checks: Callable[[Settings], AsyncIterator[Finding]]  # doctor's lines for it
    prefills_token: Callable[[Settings], bool]  # may the invite page put the token in the link?


def peer_http_client(settings: Settings, *, ca_bundle: Path | None) -> httpx.AsyncClient:
    """A client for one peer (MAS, Synapse, the homeserver): explicit timeouts, TLS verified
    against the system CAs or `ca_bundle`."""
    verify: ssl.SSLContext | bool = True
    if ca_bundle is not None:
        verify = ssl.create_default_context(cafile=str(ca_bundle))
    timeout = settings.http_timeout_seconds
    # Kept open, all of them: `runtime.CONCURRENT_RECONCILES` use them at once, and a
    # connection closed after each request costs a TLS handshake for the next.
    limits = httpx.Limits(
        max_connections=MAS_CONNECTIONS, max_keepalive_connections=MAS_CONNECTIONS
    )
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=limits,
        # The loop's own connections (a request in one write, TLS in uvloop's C): a MAS create
        # is one of the few requests per Invitation. httpx mounts a proxy named in the
        # environment only without a transport of ours: then its own, as before.
        # trust_env: SSL_CERT_FILE and SSL_CERT_DIR count, as for httpx's own transport.
        transport=None
        if _environment_names_a_proxy()
        else coalesced_transport(verify=verify, limits=limits, trust_env=True),
        headers={"User-Agent": "matrix-invite-operator"},
    )


def _environment_names_a_proxy() -> bool:
    # What httpx reads for its proxies (urllib's getproxies: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY).
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))
