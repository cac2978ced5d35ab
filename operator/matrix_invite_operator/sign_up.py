"""What the mail must say about sign-up, from MAS's own configuration unless the settings say it.

Owns `SignUpFacts` (the sign-up shape, provider name, MAS's buttons, server name, whether MAS
emails a 6-digit code or shows a CAPTCHA, and whether registration is token-gated at all) and
`SiteWatch`, which reads MAS's `GET /site-config` and enabled upstream providers at start and
again every sync interval, so the mail follows the server's real sign-up and a MAS that lets
anyone in is reported on each new Invitation. Settings win over MAS: an admin who sets the
sign-up path, provider name or server name gets exactly that.

The shape is what MAS 1.22's `/register` does (crates/handlers/src/views/register/mod.rs):
password registration off and exactly one enabled provider redirects straight to that provider
("mas-upstream": no page, no button); password registration on and no provider redirects to the
password form ("mas-password"); anything else shows the "Create an account" page with a button
per provider, after the password button when password registration is on ("mas-choice").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

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
    # MAS's "Create an account" page: the providers' buttons in MAS's order, and whether a
    # password button comes first. Empty and False when MAS shows no such page (or is not read).
    provider_buttons: tuple[str, ...] = ()
    password_button: bool = False
    source: str = "the settings"  # where the shape came from: the settings, or what MAS said

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
    """The facts the MAS settings and (when read) MAS's site-config and providers give."""
    named = settings.mas_upstream_provider_name
    if site is None:
        # MAS not read: the settings alone; "upstream" means the one-provider redirect.
        upstream = settings.mas_sign_up == "upstream"
        return SignUpFacts(
            "mas-upstream" if upstream else "mas-password", named, settings.server_name
        )
    password = site.password_registration_enabled
    names = tuple(_button_label(p) for p in providers)
    choice_page = not (password and not providers) and not (not password and len(providers) == 1)
    buttons: tuple[str, ...] = names if choice_page else ()
    provider = named or (names[0] if len(names) == 1 else None)
    sign_up: SignUp
    if settings.mas_sign_up == "password" or (settings.mas_sign_up is None and not providers):
        sign_up = "mas-password"
    elif choice_page and buttons:
        sign_up = "mas-choice"
    else:
        sign_up = "mas-upstream"
    return SignUpFacts(
        sign_up,
        provider,
        settings.server_name or site.server_name,
        email_code=site.password_registration_email_required,
        captcha=site.captcha_enabled,
        unprotected=_unprotected(site, providers),
        provider_buttons=buttons,
        password_button=choice_page and password,
        source=_described(site, names),
    )


def _button_label(provider: UpstreamProvider) -> str:
    """The name on MAS's button: `human_name`, else the issuer (an https one as domain and path,
    MAS's `simplify_url(keep_path=True)`), else the id."""
    a = provider.attributes
    if a.human_name:
        return a.human_name
    if a.issuer:
        parts = urlsplit(a.issuer)
        if parts.scheme == "https" and parts.hostname:
            return parts.hostname + parts.path
        return urlunsplit(parts._replace(query="", fragment=""))
    return provider.id


def _described(site: SiteConfig, names: Sequence[str]) -> str:
    password = "on" if site.password_registration_enabled else "off"
    listed = ", ".join(names) if names else "none"
    return f"MAS: password registration {password}, enabled upstream providers: {listed}"


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
        # MAS ORs the deprecated global key (site-config's registration_token_required) in.
        if not (p.attributes.registration_token_required or site.registration_token_required)
    ]
    if not reasons:
        return None
    return "; ".join(reasons) + ": invitations protect nothing. Run `matrix-invite-operator doctor`"


class SiteWatch:
    """The current `SignUpFacts`, refreshed from MAS; `facts` is always usable."""

    def __init__(
        self,
        settings: Settings,
        client: MasAdminClient | None,
        facts: SignUpFacts | None = None,
    ) -> None:
        """`facts`: what holds until MAS is read (default: what MAS's settings say)."""
        self._settings = settings
        self._client = client
        self.facts = facts or facts_from(settings)
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
                "MAS's sign-up: %s, provider %s, server name %s, password sign-up emails a code "
                "%s, CAPTCHA %s%s",
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
