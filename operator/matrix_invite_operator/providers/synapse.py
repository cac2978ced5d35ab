"""The Synapse provider (no MAS): the admin API client with the admin token, Synapse's token
store and account lookup, the settings' sign-up facts, the admin token to act in Matrix, and
doctor's one line for it (only the settings and SMTP are checked)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from ..backends.synapse import (
    AdminTokenSessions,
    SynapseAccounts,
    SynapseAdminClient,
    SynapseTokenBackend,
)
from ..onboarding import Observer
from ..settings import Settings
from ..sign_up import SignUpFacts, SiteWatch
from .findings import Finding, Verdict
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
        # The settings say it all: Synapse has no site-config.
        sign_up=SiteWatch(settings, None, sign_up_facts(settings)),
        sessions=AdminTokenSessions(settings.synapse_admin_token_value),
        http=http,
    )


def sign_up_facts(settings: Settings) -> SignUpFacts:
    """Synapse's own registration, with the server name the settings must give."""
    return SignUpFacts("synapse", None, settings.server_name)


async def read_sign_up(settings: Settings) -> SignUpFacts:
    return sign_up_facts(settings)  # nothing to ask


async def doctor_checks(settings: Settings) -> AsyncIterator[Finding]:
    yield Finding(Verdict.SKIP, "backend", "synapse: only the settings and SMTP are checked")


KIND = ProviderKind(
    name="Synapse",
    build=build,
    url=lambda settings: settings.synapse_url,
    sign_up_facts=sign_up_facts,
    read_sign_up=read_sign_up,
    doctor_checks=doctor_checks,
    prefills_token=lambda settings: False,  # only MAS's /register reads a token from the link
)
