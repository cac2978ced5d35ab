"""One provider per token backend (`Provider`): its HTTP client, token store, account lookup,
sign-up facts and acting sessions, built from the settings as one object.

`build_provider` picks the provider `settings.backend` names; `runtime` wires what it gets without
asking which backend it is, and doctor, render-mail and the invite page ask its `ProviderKind`
(sign-up facts, doctor checks, token pre-fill). Adding a backend: its `backends/` module, a
module here with its `KIND`, a line in `KINDS`, and its settings.
"""

from __future__ import annotations

import logging

from ..errors import ConfigurationError
from ..onboarding import Observer
from ..settings import Settings
from ..sign_up import SiteWatch
from ..unconfigured import UnconfiguredBackend
from . import mas, synapse
from .provider import MAS_CONNECTIONS, Provider, ProviderKind, RequestObserver, peer_http_client

__all__ = [
    "KINDS",
    "MAS_CONNECTIONS",
    "Provider",
    "ProviderKind",
    "build_provider",
    "peer_http_client",
]

logger = logging.getLogger(__name__)


KINDS: dict[str, ProviderKind] = {"mas": mas.KIND, "synapse": synapse.KIND}


def build_provider(
    settings: Settings,
    *,
    on_request: RequestObserver | None = None,
    observe: Observer | None = None,
) -> Provider:
    """The provider `settings.backend` names (`on_request`: each backend request, for the
    metrics; `observe`: onboarding's steps). Settings that cannot reach the backend give a
    provider whose every call answers with what to set: the operator runs and says so."""
    try:
        return KINDS[settings.backend].build(settings, on_request=on_request, observe=observe)
    except ConfigurationError as problem:
        logger.error("the token backend is misconfigured, nothing will be issued: %s", problem)
        unconfigured = UnconfiguredBackend(problem)
        kind = KINDS[settings.backend]
        return Provider(
            name=kind.name,
            backend=unconfigured,
            accounts=unconfigured,
            sign_up=SiteWatch(settings, None, kind.sign_up_facts(settings)),
            sessions=None,
        )
