"""The MAS provider: the Admin API client with its client-credentials auth, MAS's token store,
account lookup, site-config watch and the onboarding user's personal sessions; doctor's MAS
checks (`mas_doctor`), and the MAS version check that decides whether the invite page's continue
button may carry the token (`/register?token=...`, proposed in MAS pull request #5971, in no
release yet)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx

from ..backends.mas import (
    MasAccounts,
    MasAdminClient,
    MasTokenBackend,
    PersonalSessions,
)
from ..backends.oauth import ClientCredentialsAuth
from ..onboarding import Observer
from ..settings import Settings
from ..sign_up import SignUpFacts, SiteWatch, facts_from
from .findings import Finding
from .mas_doctor import MasChecks
from .provider import Provider, ProviderKind, RequestObserver, peer_http_client

TOKEN_PREFILL_SINCE: tuple[int, ...] | None = None
"""The first MAS release whose `/register?token=` pre-fills the registration token; None while
no release has it (MAS 1.22 ignores the parameter). Set it when a release ships #5971."""

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def mas_http_client(settings: Settings) -> httpx.AsyncClient:
    """The client for MAS's Admin API and token endpoint."""
    return peer_http_client(settings, ca_bundle=settings.mas_ca_bundle)


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


def build(
    settings: Settings,
    *,
    on_request: RequestObserver | None = None,
    observe: Observer | None = None,
) -> Provider:
    """Raises ConfigurationError (before opening anything) when MAS cannot be reached at all."""
    settings.require_backend()
    http = mas_http_client(settings)
    client = mas_admin_client(settings, http, on_request=on_request)
    site = SiteWatch(settings, client)
    sessions = None
    if settings.onboarding_user is not None:
        sessions = PersonalSessions(
            client,
            settings.onboarding_user,
            server_name=site.server_name,
            lifetime_seconds=settings.onboarding_session_seconds,
            observe=observe,
        )
    return Provider(
        name="MAS",
        backend=MasTokenBackend(client),
        accounts=MasAccounts(client, server_name=site.server_name),
        sign_up=site,
        sessions=sessions,
        http=http,
    )


async def read_sign_up(settings: Settings) -> SignUpFacts:
    """What `run` would put in a mail now: site-config and enabled upstream providers, asked
    through the same client (the settings alone while MAS is not configured)."""
    if settings.mas_url is None:
        return replace(
            facts_from(settings),
            source="the settings (MAS not configured: MATRIX_INVITE_MAS_URL)",
        )
    async with mas_http_client(settings) as http:
        return await SiteWatch(settings, mas_admin_client(settings, http)).refresh()


async def doctor_checks(settings: Settings) -> AsyncIterator[Finding]:
    async with mas_http_client(settings) as http:
        async for finding in MasChecks(settings, http, mas_admin_client(settings, http)).findings():
            yield finding


def prefills_token(
    version: str | None, since: tuple[int, ...] | None = TOKEN_PREFILL_SINCE
) -> bool:
    """Whether MAS `version` pre-fills the registration token from `/register?token=`."""
    if version is None or since is None:
        return False
    match = _VERSION.match(version.strip())
    if match is None:
        return False
    return tuple(int(part) for part in match.groups()) >= since


KIND = ProviderKind(
    name="MAS",
    build=build,
    url=lambda settings: settings.mas_url,
    sign_up_facts=facts_from,
    read_sign_up=read_sign_up,
    doctor_checks=doctor_checks,
    prefills_token=lambda settings: prefills_token(settings.invite_page_mas_version),
)
