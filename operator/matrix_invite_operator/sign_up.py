"""What the mail must say about sign-up, from MAS's own configuration unless the settings say it.

Owns `SignUpFacts` (sign-up path, provider name, server name, whether MAS emails a 6-digit code
or shows a CAPTCHA, and whether registration is token-gated at all) and `SiteWatch`, which reads
MAS's `GET /site-config` and enabled upstream providers at start and again every sync interval,
so the mail follows the server's real sign-up and a MAS that lets anyone in is reported on each
new Invitation. Settings win over MAS: an admin who sets the sign-up path, provider name or
server name gets exactly that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .backends.mas import MasAdminClient, SiteConfig, UpstreamProvider
from .errors import BackendUnavailable, ConfigurationError, OperatorError
from .mail.render import SignUp
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignUpFacts:
    """How invitees sign up on this installation, as far as it is known."""

    sign_up: SignUp
    upstream_provider: str | None
    server_name: str | None  # None: not set and MAS not read yet
    email_code: bool = True
    captcha: bool = False
    unprotected: str | None = None  # why an invitation protects nothing, if it does not

    def require_server_name(self) -> str:
        if self.server_name is None and self.sign_up == "synapse":
            raise ConfigurationError(
                "the Synapse backend needs the server name: set MATRIX_INVITE_SERVER_NAME "
                "(chart value invitations.serverName)"
            )
        if self.server_name is None:
            raise BackendUnavailable(
                "the server name is not set (MATRIX_INVITE_SERVER_NAME) and MAS's site-config "
                "could not be read yet",
                retry_after=30.0,
            )
        return self.server_name


def facts_from(
    settings: Settings,
    site: SiteConfig | None = None,
    providers: Sequence[UpstreamProvider] = (),
) -> SignUpFacts:
    """The facts the settings and (when read) MAS's site-config and providers give."""
    if settings.backend == "synapse":
        return SignUpFacts("synapse", None, settings.server_name)
    if settings.mas_sign_up is not None:
        sign_up: SignUp = "mas-upstream" if settings.mas_sign_up == "upstream" else "mas-password"
    elif site is not None and not site.password_registration_enabled and providers:
        sign_up = "mas-upstream"
    else:
        sign_up = "mas-password"
    provider = settings.mas_upstream_provider_name
    if provider is None and len(providers) == 1:
        provider = providers[0].attributes.human_name
    if site is None:
        return SignUpFacts(sign_up, provider, settings.server_name)
    return SignUpFacts(
        sign_up,
        provider,
        settings.server_name or site.server_name,
        email_code=site.password_registration_email_required,
        captcha=site.captcha_enabled,
        unprotected=_unprotected(site, providers),
    )


def _unprotected(site: SiteConfig, providers: Sequence[UpstreamProvider]) -> str | None:
    reasons = []
    if site.password_registration_enabled and not site.token_required:
        reasons.append(
            "MAS lets anyone sign up with a password without a registration token "
            "(set account.password_registration_token_required: true)"
        )
    reasons += [
        f"upstream provider {p.name} lets anyone with an account there sign up without a "
        "token (set registration_token_required: true on it)"
        for p in providers
        if not p.attributes.registration_token_required
    ]
    if not reasons:
        return None
    return "; ".join(reasons) + ": invitations protect nothing. Run `matrix-invite-operator doctor`"


class SiteWatch:
    """The current `SignUpFacts`, refreshed from MAS; `facts` is always usable."""

    def __init__(self, settings: Settings, client: MasAdminClient | None) -> None:
        self._settings = settings
        self._client = client
        self.facts = facts_from(settings)
        self.read_once = False

    def server_name(self) -> str:
        """The server name as now known (set, or from MAS); raises while it is unknown."""
        return self.facts.require_server_name()

    async def refresh(self) -> SignUpFacts:
        """Read MAS's site-config and providers now; log when what the mail says changes."""
        if self._client is None:
            return self.facts
        site = await self._client.site_config()
        providers = await self._client.enabled_upstream_providers()
        facts = facts_from(self._settings, site, providers)
        if facts != self.facts:
            log = logger.warning if facts.unprotected else logger.info
            log(
                "MAS's sign-up: %s, provider %s, server name %s, email code %s, CAPTCHA %s%s",
                facts.sign_up,
                facts.upstream_provider or "-",
                facts.server_name,
                "yes" if facts.email_code else "no",
                "yes" if facts.captcha else "no",
                f"; {facts.unprotected}" if facts.unprotected else "",
            )
        self.facts = facts
        self.read_once = True
        return facts

    async def run_forever(self, interval: float) -> None:
        """Refresh every `interval` seconds (at once if never read); failures keep the facts.

        Returns at once when there is no MAS to read (Synapse backend, or MAS not configured).
        """
        if self._client is None:
            return
        failing = False
        while True:
            if self.read_once:
                await asyncio.sleep(interval)
            try:
                await self.refresh()
                failing = False
            except OperatorError as exc:
                if not failing:  # once per outage, not once per interval
                    logger.warning("cannot read MAS's site-config (will retry): %s", exc)
                failing = True
                await asyncio.sleep(interval)
