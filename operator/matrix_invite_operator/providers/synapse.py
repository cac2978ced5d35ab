"""The Synapse provider (no MAS): the admin API client with the admin token, Synapse's token
store and account lookup, the settings' sign-up facts, and the admin token to act in Matrix."""

from __future__ import annotations

import httpx

from ..backends.synapse import (
    AdminTokenSessions,
    SynapseAccounts,
    SynapseAdminClient,
    SynapseTokenBackend,
)
from ..onboarding import Observer
from ..settings import Settings
from ..sign_up import SiteWatch
from .provider import Provider, ProviderKind, RequestObserver, peer_http_client


def synapse_http_client(settings: Settings) -> httpx.AsyncClient:
    """The client for Synapse (the admin API, or the client API onboarding joins rooms with)."""
    return peer_http_client(
        settings, ca_bundle=settings.synapse_ca_bundle or settings.mas_ca_bundle
    )


def build(
    settings: Settings,
    *,
    on_request: RequestObserver | None = None,
    observe: Observer | None = None,
) -> Provider:
    """Raises ConfigurationError (before opening anything) when Synapse cannot be reached."""
    settings.require_backend()
    if settings.synapse_url is None:  # require_backend said so
        raise AssertionError("unreachable")
    http = synapse_http_client(settings)
    client = SynapseAdminClient(http, str(settings.synapse_url), settings.synapse_admin_token_value)
    return Provider(
        name="Synapse",
        backend=SynapseTokenBackend(client),
        accounts=SynapseAccounts(client),
        sign_up=SiteWatch(settings, None),  # the settings say it all: Synapse has no site-config
        sessions=AdminTokenSessions(settings.synapse_admin_token_value),
        http=http,
    )


KIND = ProviderKind(name="Synapse", build=build, url=lambda settings: settings.synapse_url)
