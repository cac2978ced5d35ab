"""The operator's long-lived dependencies (`Dependencies`): built from `Settings`, closed again.

The token backend's provider (`providers.build_provider`: its client, token store, account
lookup, sign-up facts and acting sessions, whichever backend the settings name), one
`httpx.AsyncClient` for the Kubernetes API (as the `KubeLogin` that Kopf's login handler shares)
and one for the homeserver, the mail renderer and the SMTP mailer: created once at startup and
kept in Kopf's memo, never as module globals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import weakref
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field

import httpx

from .authentik import AuthentikClient, BearerTokenAuth
from .backends import TokenBackend
from .errors import ConfigurationError
from .homeserver import HomeserverClient
from .kube import KubeApi, KubeEvents, kube_http_client
from .kube_identity import KubeLogin
from .mail.invitation import SmtpInvitationMailer
from .mail.render import MailRenderer, validate_registration_url_template
from .mail.send import Mailer
from .mail.throttle import MailThrottle
from .metrics import OperatorMetrics
from .onboarding import Onboarding
from .ports import EnrollmentInvitations, EventSink, Invitation, InvitationMailer, KubeStore
from .providers import KINDS, MAS_CONNECTIONS, Provider, build_provider
from .providers import peer_http_client as peer_http_client  # authentik's client uses it
from .providers.synapse import synapse_http_client
from .settings import Settings
from .sign_up import SignUpFacts, SiteWatch
from .unconfigured import UnconfiguredEnrollment, UnconfiguredMailer

logger = logging.getLogger(__name__)

#: Invitations reconciled at once; the rest wait their turn in order. As many as the MAS client
#: keeps connections (`MAS_CONNECTIONS`): with hundreds in flight, the surplus queued inside the
#: HTTP pools instead, where the wait counts against the request timeout, so a burst on a busy
#: machine failed with PoolTimeout and backed off for minutes (docs/performance.md).
CONCURRENT_RECONCILES = MAS_CONNECTIONS


@dataclass
class Clients:
    """The HTTP clients we own besides the provider's, and the mailer's kept SMTP sessions:
    what we must close."""

    kube: httpx.AsyncClient
    homeserver: httpx.AsyncClient | None = None
    authentik: httpx.AsyncClient | None = None
    mail: SmtpInvitationMailer | None = None


def authentik_http_client(settings: Settings) -> httpx.AsyncClient:
    """The client for authentik's API (the invitee's enrollment invitation)."""
    return peer_http_client(settings, ca_bundle=settings.authentik_ca_bundle)


def build_authentik(settings: Settings, http: httpx.AsyncClient) -> AuthentikClient:
    """The authentik client the settings describe (`require_authentik` has checked them)."""
    settings.require_authentik()
    if settings.authentik_url is None or settings.authentik_flow_slug is None:
        raise AssertionError("unreachable")  # require_authentik said so
    return AuthentikClient(
        http,
        str(settings.authentik_url),
        # Read at each request: a rotated token file needs no restart.
        auth=BearerTokenAuth(settings.authentik_api_token_value),
        flow_slug=settings.authentik_flow_slug,
    )


def build_mailer(
    settings: Settings, *, sign_up: Callable[[], SignUpFacts] | None = None
) -> SmtpInvitationMailer:
    validate_registration_url_template(settings.registration_url)
    mailer = Mailer.from_settings(settings)
    renderer = MailRenderer(settings.mail_template_dir)
    # A broken admin template fails at startup, not on the first Invitation.
    renderer.check(enrollment=settings.authentik_enabled)
    rate = settings.mail_rate_per_minute
    throttle = MailThrottle(rate) if rate > 0 else None
    if sign_up is None:  # what the settings alone say, as the backend reads them
        sign_up = functools.partial(KINDS[settings.backend].sign_up_facts, settings)
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
    provider: Provider | None = None  # the backend's parts, closed on shutdown
    # The invitee's authentik invitation (enrollment.py); None: authentik is not configured.
    enrollment: EnrollmentInvitations | None = None
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
    provider = build_provider(
        settings,
        on_request=metrics.record_mas_request if metrics is not None else None,
        observe=metrics.record_onboarding if metrics is not None else None,
    )
    site = provider.sign_up
    mailer: InvitationMailer
    smtp: SmtpInvitationMailer | None = None
    try:
        mailer = smtp = build_mailer(settings, sign_up=lambda: site.facts)
    except ConfigurationError as problem:
        logger.error("mail is misconfigured, no invitation will be sent: %s", problem)
        mailer = UnconfiguredMailer(problem)
    if metrics is not None:
        mailer = metrics.counting_mailer(mailer)
        metrics.observe_sign_up(lambda: site.facts if site.read_once else None)
    kube_http = await kube_http_client(kube or KubeLogin())
    kube_api = KubeApi(kube_http)
    homeserver_http = None
    homeserver_url = settings.homeserver_client_url()
    if homeserver_url is not None:
        homeserver_http = synapse_http_client(settings)
    deps = Dependencies(
        settings=settings,
        backend=provider.backend,
        kube=kube_api,
        mailer=mailer,
        events=KubeEvents(kube_api),
        site=site,
        onboarding=build_onboarding(
            settings,
            provider,
            homeserver_http,
            observe=metrics.record_onboarding if metrics is not None else None,
        ),
        provider=provider,
    )
    authentik_http = None
    if settings.authentik_enabled:
        authentik_http = authentik_http_client(settings)
        try:
            deps.enrollment = build_authentik(settings, authentik_http)
        except ConfigurationError as problem:
            logger.error("authentik is misconfigured, no invitation will be sent: %s", problem)
            deps.enrollment = UnconfiguredEnrollment(problem)
    deps.resources = Clients(
        kube=kube_http, homeserver=homeserver_http, authentik=authentik_http, mail=smtp
    )
    return deps


def build_onboarding(
    settings: Settings,
    provider: Provider,
    http: httpx.AsyncClient | None,
    *,
    observe: Callable[[str, str], None] | None = None,
) -> Onboarding:
    """Account lookups always (the provider's); rooms when the provider can act in Matrix."""
    url = settings.homeserver_client_url()
    homeserver = HomeserverClient(http, url) if http is not None and url is not None else None
    return Onboarding(
        settings,
        provider.accounts,
        homeserver=homeserver,
        sessions=provider.sessions,
        observe=observe,
    )


async def close_dependencies(deps: Dependencies) -> None:
    if deps.provider is not None:
        await deps.provider.aclose()
    else:
        await deps.backend.aclose()
    clients = deps.resources
    if clients is not None:
        await clients.kube.aclose()
        if clients.homeserver is not None:
            await clients.homeserver.aclose()
        if clients.authentik is not None:
            await clients.authentik.aclose()
        if clients.mail is not None:
            await clients.mail.aclose()
