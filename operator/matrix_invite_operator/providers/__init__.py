"""One provider per token backend (`Provider`): its HTTP client, token store, account lookup,
sign-up facts and acting sessions, built from the settings as one object.

`build_provider` is the one place that looks at `settings.backend`; `runtime` wires what it gets
without asking which backend it is. Adding a backend: its `backends/` module, a module here with
its `build`, a line in `BUILDERS`, and its settings.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..errors import ConfigurationError
from ..onboarding import Observer
from ..settings import Settings
from ..sign_up import SiteWatch
from ..unconfigured import UnconfiguredBackend
from . import mas, synapse
from .provider import MAS_CONNECTIONS, Provider, RequestObserver, peer_http_client

__all__ = ["BUILDERS", "MAS_CONNECTIONS", "Provider", "build_provider", "peer_http_client"]

logger = logging.getLogger(__name__)


class ProviderBuilder(Protocol):
    def __call__(
        self,
        settings: Settings,
        *,
        on_request: RequestObserver | None = None,
        observe: Observer | None = None,
    ) -> Provider: ...


BUILDERS: dict[str, ProviderBuilder] = {"mas": mas.build, "synapse": synapse.build}


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
        return BUILDERS[settings.backend](settings, on_request=on_request, observe=observe)
    except ConfigurationError as problem:
        logger.error("the token backend is misconfigured, nothing will be issued: %s", problem)
        unconfigured = UnconfiguredBackend(problem)
        return Provider(
            name=settings.backend,
            backend=unconfigured,
            accounts=unconfigured,
            sign_up=SiteWatch(settings, None),
            sessions=None,
        )
