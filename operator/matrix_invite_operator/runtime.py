"""The operator's long-lived dependencies (`Dependencies`): built from `Settings`, closed again.

One `httpx.AsyncClient` for the token backend (explicit timeouts, verified TLS or a custom CA
bundle), one for the Kubernetes API (as the `KubeLogin` that Kopf's login handler shares), the
token backend (MAS or Synapse, as `settings.backend` says: the only place that looks), the mail
renderer, the SMTP mailer and the watch on MAS's site-config: created once at startup and kept
in Kopf's memo, never as module globals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import weakref
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .backends import TokenBackend
from .backends.mas import MasAdminClient, MasTokenBackend, RequestObserver
from .backends.oauth import ClientCredentialsAuth
from .backends.synapse import SynapseAdminClient, SynapseTokenBackend
from .errors import ConfigurationError
from .homeserver import HomeserverClient
from .kube import KubeApi, KubeEvents, kube_http_client
from .kube_identity import KubeLogin
from .mail.invitation import SmtpInvitationMailer
from .mail.render import MailRenderer, validate_registration_url_template
from .mail.send import Mailer
from .mail.throttle import MailThrottle
from .metrics import OperatorMetrics
from .onboarding import (
    ActingSessions,
    AdminTokenSessions,
    Observer,
    Onboarding,
    PersonalSessions,
)
from .ports import EventSink, Invitation, InvitationMailer, KubeStore
from .settings import Settings
from .sign_up import SignUpFacts, SiteWatch
from .unconfigured import UnconfiguredBackend, UnconfiguredMailer

logger = logging.getLogger(__name__)

MAS_CONNECTIONS = 10

#: Invitations reconciled at once; the rest wait their turn in order. As many as the MAS client
#: keeps connections (`MAS_CONNECTIONS`): with hundreds in flight, the surplus queued inside the
#: HTTP pools instead, where the wait counts against the request timeout, so a burst on a busy
#: machine failed with PoolTimeout and backed off for minutes (docs/performance.md).
CONCURRENT_RECONCILES = MAS_CONNECTIONS


@dataclass
class Clients:
    """The HTTP clients we own and must close."""

    backend: httpx.AsyncClient
    kube: httpx.AsyncClient
    homeserver: httpx.AsyncClient | None = None


def peer_http_client(settings: Settings, *, ca_bundle: Path | None) -> httpx.AsyncClient:
    """A client for one peer (MAS, Synapse, the homeserver): explicit timeouts, TLS verified
    against the system CAs or `ca_bundle`."""
    verify: ssl.SSLContext | bool = True
    if ca_bundle is not None:
        verify = ssl.create_default_context(cafile=str(ca_bundle))
    timeout = settings.http_timeout_seconds
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        # Kept open, all of them: `reconcile.CONCURRENT_RECONCILES` use them at once, and a
        # connection closed after each request costs a TLS handshake for the next.
        limits=httpx.Limits(
            max_connections=MAS_CONNECTIONS, max_keepalive_connections=MAS_CONNECTIONS
        ),
        headers={"User-Agent": "matrix-invite-operator"},
    )


def mas_http_client(settings: Settings) -> httpx.AsyncClient:
    """The client for MAS's Admin API and token endpoint."""
    return peer_http_client(settings, ca_bundle=settings.mas_ca_bundle)


def synapse_http_client(settings: Settings) -> httpx.AsyncClient:
    """The client for Synapse (the admin API, or the client API onboarding joins rooms with)."""
    return peer_http_client(
        settings, ca_bundle=settings.synapse_ca_bundle or settings.mas_ca_bundle
    )


def backend_http_client(settings: Settings) -> httpx.AsyncClient:
    """The client for the token backend `settings.backend` names."""
    return peer_http_client(settings, ca_bundle=settings.backend_ca_bundle())


def build_mas_backend(
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    on_request: RequestObserver | None = None,
    server_name: Callable[[], str] | None = None,
) -> MasTokenBackend:
    client = mas_admin_client(settings, http, on_request=on_request)
    if server_name is None:
        return MasTokenBackend(client)
    return MasTokenBackend(client, server_name=server_name)


def mas_admin_client(
    settings: Settings, http: httpx.AsyncClient, *, on_request: RequestObserver | None = None
) -> MasAdminClient:
    """The Admin API client with its client-credentials auth, as the settings describe them."""
    settings.require_backend()
    if settings.mas_url is None or settings.mas_client_id is None:  # require_backend said so
        raise AssertionError("unreachable")
    auth = ClientCredentialsAuth(
        settings.mas_client_id,
        settings.mas_client_secret_value,  # read at each renewal: rotation needs no restart
        token_endpoint=str(settings.mas_token_endpoint) if settings.mas_token_endpoint else None,
        issuer=str(settings.mas_url),
        client_auth_method=settings.mas_client_auth_method,
    )
    return MasAdminClient(http, str(settings.mas_url), auth=auth, on_request=on_request)


def build_synapse_backend(settings: Settings, http: httpx.AsyncClient) -> SynapseTokenBackend:
    settings.require_backend()
    if settings.synapse_url is None:  # require_backend said so
        raise AssertionError("unreachable")
    client = SynapseAdminClient(http, str(settings.synapse_url), settings.synapse_admin_token_value)
    return SynapseTokenBackend(client)


def build_backend(settings: Settings, http: httpx.AsyncClient, **mas_options: Any) -> TokenBackend:
    """The token backend this installation uses: the one place that branches on it."""
    if settings.backend == "synapse":
        return build_synapse_backend(settings, http)
    return build_mas_backend(settings, http, **mas_options)


def _mas_configured(settings: Settings) -> bool:
    try:
        settings.require_backend()
    except ConfigurationError:
        return False  # build_backend reports it
    return True


def build_mailer(
    settings: Settings, *, sign_up: Callable[[], SignUpFacts] | None = None
) -> SmtpInvitationMailer:
    validate_registration_url_template(settings.registration_url)
    mailer = Mailer.from_settings(settings)
    renderer = MailRenderer(settings.mail_template_dir)
    renderer.check()  # a broken admin template fails at startup, not on the first Invitation
    rate = settings.mail_rate_per_minute
    throttle = MailThrottle(rate) if rate > 0 else None
    return SmtpInvitationMailer(settings, renderer, mailer, throttle, sign_up=sign_up)


@dataclass
class Dependencies:
    """Everything reconcile and the sync pass need (`ports.Collaborators`), built once at
    startup and kept in Kopf's memo; tests build it with fakes in place of the clients."""

    settings: Settings
    backend: TokenBackend
    kube: KubeStore
    mailer: InvitationMailer
    events: EventSink
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    # Weak: a lock nobody holds or waits for is dropped, not kept for every Invitation ever
    # handled (about 0.5 KB each, at 20,000 Invitations 10 MB; issue 24).
    locks: MutableMapping[str, asyncio.Lock] = field(default_factory=weakref.WeakValueDictionary)
    slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CONCURRENT_RECONCILES)
    )
    # What MAS says about sign-up; None: nothing known beyond the settings.
    site: SiteWatch | None = None
    onboarding: Onboarding | None = None  # who accepted, and their rooms (onboarding.py)
    resources: Clients | None = None  # what `build_dependencies` opened; closed on shutdown

    def lock_for(self, invitation: Invitation) -> asyncio.Lock:
        # The Kopf handler and the sync pass may both act on one Invitation: serialise them.
        return self.locks.setdefault(invitation.uid, asyncio.Lock())


async def build_dependencies(
    settings: Settings,
    *,
    kube: KubeLogin | None = None,
    metrics: OperatorMetrics | None = None,
) -> Dependencies:
    backend_http = backend_http_client(settings)
    observer = metrics.record_mas_request if metrics is not None else None
    site = SiteWatch(
        settings,
        mas_admin_client(settings, backend_http, on_request=observer)
        if settings.backend == "mas" and _mas_configured(settings)
        else None,
    )
    mailer: InvitationMailer
    try:
        mailer = build_mailer(settings, sign_up=lambda: site.facts)
    except ConfigurationError as problem:
        logger.error("mail is misconfigured, no invitation will be sent: %s", problem)
        mailer = UnconfiguredMailer(problem)
    if metrics is not None:
        mailer = metrics.counting_mailer(mailer)
        metrics.observe_sign_up(lambda: site.facts if site.read_once else None)
    backend: TokenBackend
    try:
        backend = build_backend(
            settings, backend_http, on_request=observer, server_name=site.server_name
        )
    except ConfigurationError as problem:
        logger.error("the token backend is misconfigured, nothing will be issued: %s", problem)
        backend = UnconfiguredBackend(problem)
    kube_http = await kube_http_client(kube or KubeLogin())
    kube_api = KubeApi(kube_http)
    homeserver_http = None
    homeserver_url = settings.homeserver_client_url()
    if homeserver_url is not None:
        homeserver_http = synapse_http_client(settings)
    deps = Dependencies(
        settings=settings,
        backend=backend,
        kube=kube_api,
        mailer=mailer,
        events=KubeEvents(kube_api),
        site=site,
        onboarding=build_onboarding(
            settings,
            backend,
            homeserver_http,
            server_name=site.server_name,
            observe=metrics.record_onboarding if metrics is not None else None,
        ),
    )
    deps.resources = Clients(backend=backend_http, kube=kube_http, homeserver=homeserver_http)
    return deps


def build_onboarding(
    settings: Settings,
    backend: TokenBackend,
    http: httpx.AsyncClient | None,
    *,
    server_name: Callable[[], str],
    observe: Observer | None = None,
) -> Onboarding:
    """Account lookups always (through the backend); rooms when the operator can act in Matrix:
    with Synapse's admin token, or with MAS personal sessions of the onboarding user."""
    url = settings.homeserver_client_url()
    homeserver = HomeserverClient(http, url) if http is not None and url is not None else None
    sessions: ActingSessions | None = None
    if isinstance(backend, SynapseTokenBackend):
        sessions = AdminTokenSessions(settings.synapse_admin_token_value)
    elif isinstance(backend, MasTokenBackend) and settings.onboarding_user is not None:
        sessions = PersonalSessions(
            backend.client,
            settings.onboarding_user,
            server_name=server_name,
            lifetime_seconds=settings.onboarding_session_seconds,
            observe=observe,
        )
    return Onboarding(settings, backend, homeserver=homeserver, sessions=sessions, observe=observe)


async def close_dependencies(deps: Dependencies) -> None:
    await deps.backend.aclose()
    clients = deps.resources
    if clients is not None:
        await clients.backend.aclose()
        await clients.kube.aclose()
        if clients.homeserver is not None:
            await clients.homeserver.aclose()
