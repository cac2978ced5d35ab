"""The MAS provider: the Admin API client with its client-credentials auth, MAS's token store,
account lookup, site-config watch and the onboarding user's personal sessions."""

from __future__ import annotations

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
from ..sign_up import SiteWatch
from .provider import Provider, ProviderKind, RequestObserver, peer_http_client


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


KIND = ProviderKind(name="MAS", build=build, url=lambda settings: settings.mas_url)
