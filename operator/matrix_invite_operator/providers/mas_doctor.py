"""MAS's doctor checks (`MasChecks`): reachable, discovery, the registration link's host, the
client-credentials token, the Admin API, site-config and upstream providers (is sign-up
token-gated?), the sign-up shape the mail follows, and the token list. Each needs the one
before: they stop at the first failure. Nothing is written to MAS.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httpx

from ..backends.mas import MasAdminClient, SiteConfig, UpstreamProvider
from ..backends.oauth import DISCOVERY_PATH, ClientCredentialsAuth
from ..backends.transport import certificate_error
from ..errors import OperatorError
from ..settings import Settings
from ..sign_up import SignUpFacts, facts_from
from .findings import Finding, Verdict, fail, ok

_ESS_MAS_URL = "http://<release>-matrix-authentication-service.<namespace>.svc.cluster.local:8080"
_RESTART = "then restart MAS (kubectl rollout restart), which reads its config only at start"


class _Stopped(Exception):
    """A MAS check failed; the ones after it cannot run."""

    def __init__(self, check: str, text: str) -> None:
        super().__init__(text)
        self.finding = Finding(Verdict.FAIL, check, text)


class MasChecks:
    """The MAS checks for one `Settings`, through the operator's own HTTP and Admin API client."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient, client: MasAdminClient) -> None:
        self.settings = settings
        self.http = http
        self.client = client

    async def findings(self) -> AsyncIterator[Finding]:
        http, client = self.http, self.client
        auth = client.auth
        if not isinstance(auth, ClientCredentialsAuth):  # mas_admin_client always sets one
            raise TypeError("the Admin API client has no client-credentials auth")
        base = str(self.settings.mas_url).rstrip("/")
        try:
            yield await self._reachable(http, base)
            yield await self._discovery(http, auth)
            yield await self._registration_link(http, base)
            yield await self._token(http, auth)
            found, version, site = await self._admin_api(client)
            yield found
            providers = await client.enabled_upstream_providers()
            facts = facts_from(self.settings, site, providers)
            for finding in self._site(site, version, facts):
                yield finding
            for finding in self._providers(providers, site, facts, version):
                yield finding
            yield _sign_up_shape(facts)
            yield await self._token_list(client)
        except _Stopped as stopped:
            yield stopped.finding
        except OperatorError as exc:  # a later call failing after the Admin API check passed
            yield fail("mas", str(exc))

    async def _reachable(self, http: httpx.AsyncClient, base: str) -> Finding:
        try:
            answer = await http.get(base + "/")
        except httpx.RequestError as exc:
            raise _Stopped(
                "reachable",
                _unreachable(exc, base)
                + f" (MATRIX_INVITE_MAS_URL, chart value mas.url; on ESS {_ESS_MAS_URL}; "
                "with networkPolicy.enabled, networkPolicy.mas must allow it)",
            ) from exc
        tls = ", TLS certificate trusted" if base.startswith("https:") else " (plain HTTP)"
        return ok("reachable", f"{base} answers ({answer.status_code}){tls}")

    async def _discovery(self, http: httpx.AsyncClient, auth: ClientCredentialsAuth) -> Finding:
        if self.settings.mas_token_endpoint is not None:
            return Finding(
                Verdict.SKIP,
                "discovery",
                f"token endpoint configured: {self.settings.mas_token_endpoint}",
            )
        try:
            endpoint = await auth.discover(http)
        except (OperatorError, httpx.RequestError) as exc:
            raise _Stopped(
                "discovery",
                f"{_text(exc)}. MATRIX_INVITE_MAS_URL (mas.url) must point at the MAS listener "
                "serving discovery and the Admin API: on ESS port 8080 (8081 serves only health "
                "and metrics)",
            ) from exc
        return ok("discovery", f"token endpoint {endpoint}")

    async def _registration_link(self, http: httpx.AsyncClient, base: str) -> Finding:
        """The mail's link must lead to MAS's public host: the issuer its discovery names."""
        link = self.settings.registration_url
        try:
            answer = await http.get(base + DISCOVERY_PATH)
            issuer = answer.json().get("issuer") if answer.status_code == 200 else None
        except (httpx.RequestError, ValueError, AttributeError):
            issuer = None
        if not isinstance(issuer, str) or not urlsplit(issuer).netloc:
            return Finding(Verdict.SKIP, "registration link", "MAS's discovery names no issuer")
        public = urlsplit(issuer)
        if urlsplit(link).netloc == public.netloc:
            return ok("registration link", f"{link} is on MAS's public host")
        return Finding(
            Verdict.WARN,
            "registration link",
            f"{link} is not on MAS's public host {public.netloc}: set "
            "MATRIX_INVITE_REGISTRATION_URL (invitations.registrationUrl) to "
            f"{public.scheme}://{public.netloc}/register",
        )

    async def _token(self, http: httpx.AsyncClient, auth: ClientCredentialsAuth) -> Finding:
        try:
            await auth.fetch_token(http)
        except (OperatorError, httpx.RequestError) as exc:
            raise _Stopped("token", _text(exc)) from exc
        return ok(
            "token",
            f"client {auth.client_id} got an access token with {auth.scope} "
            f"({auth.client_auth_method})",
        )

    async def _admin_api(self, client: MasAdminClient) -> tuple[Finding, str, SiteConfig]:
        try:
            version = await client.server_version()
            site = await client.site_config()
        except OperatorError as exc:
            raise _Stopped("admin api", str(exc)) from exc
        found = ok("admin api", f"MAS {version} answers /api/admin/v1/version and /site-config")
        return found, version, site

    def _site(self, site: SiteConfig, version: str, facts: SignUpFacts) -> list[Finding]:
        settings = self.settings
        upstream = facts.sign_up in ("mas-upstream", "mas-choice")
        findings: list[Finding] = []
        if site.password_registration_enabled:
            findings.append(ok("password registration", "enabled"))
        elif upstream:
            findings.append(ok("password registration", "off: invitees sign up upstream"))
        else:
            findings.append(
                fail(
                    "password registration",
                    "off, but MATRIX_INVITE_MAS_SIGN_UP (mas.signUp) is password: set "
                    f"account.password_registration_enabled: true, {_RESTART}; or sign up "
                    "through an upstream provider (mas.signUp: upstream)",
                )
            )
        if not site.password_registration_enabled:
            findings.append(Finding(Verdict.SKIP, "registration token", "no password registration"))
        elif site.token_required:
            findings.append(ok("registration token", "required for password sign-up"))
        else:
            key = (
                "account.password_registration_token_required: true"
                if _at_least(version, (1, 19))
                else f"account.registration_token_required: true (MAS {version} is older than "
                "1.19 and ignores password_registration_token_required)"
            )
            findings.append(
                fail(
                    "registration token",
                    "NOT REQUIRED: ANYONE CAN SIGN UP, the invitations protect nothing. "
                    f"Set {key}, {_RESTART}",
                )
            )
        if site.password_registration_enabled and site.password_registration_email_required:
            findings.append(
                ok(
                    "email verification",
                    "required: MAS mails a 6-digit code, so MAS needs its own email section "
                    "(ESS sets none; check with mas-cli config dump)",
                )
            )
        elif site.password_registration_enabled:
            findings.append(
                ok(
                    "email verification",
                    "not required: the mail skips the code, and sign-up needs no email section "
                    "in MAS",
                )
            )
        elif upstream:
            findings.append(
                ok(
                    "email verification",
                    "none on upstream sign-up: MAS sends no code (the provider's address counts "
                    "as verified), so sign-up needs no email section in MAS",
                )
            )
        findings.append(
            ok("captcha", "on: the mail tells invitees to expect it")
            if site.captcha_enabled
            else ok("captcha", "off")
        )
        if settings.server_name is None:
            findings.append(ok("server name", f"{site.server_name} (from MAS)"))
        elif site.server_name == settings.server_name:
            findings.append(ok("server name", site.server_name))
        else:
            findings.append(
                fail(
                    "server name",
                    f"MAS serves {site.server_name} but the mail names {settings.server_name}: "
                    "set MATRIX_INVITE_SERVER_NAME (invitations.serverName) to "
                    f"{site.server_name}",
                )
            )
        return findings

    def _providers(
        self,
        providers: list[UpstreamProvider],
        site: SiteConfig,
        facts: SignUpFacts,
        version: str,
    ) -> list[Finding]:
        if not providers:
            if facts.sign_up != "mas-password":
                raise _Stopped(
                    "upstream providers",
                    "none enabled, but MATRIX_INVITE_MAS_SIGN_UP (mas.signUp) is upstream: add "
                    f"the provider to MAS's upstream_oauth2.providers, {_RESTART}",
                )
            if not site.password_registration_enabled:
                raise _Stopped("sign-up", "MAS offers neither password nor upstream sign-up")
            return []
        findings = []
        # MAS ORs the deprecated global account.registration_token_required into upstream
        # sign-ups (site-config shows that key as registration_token_required).
        gated = [p.name for p in providers if p.attributes.registration_token_required]
        if gated:
            findings.append(ok("upstream providers", "token required by " + ", ".join(gated)))
        globally = [
            p.name
            for p in providers
            if not p.attributes.registration_token_required and site.registration_token_required
        ]
        if globally:
            findings.append(
                ok(
                    "upstream providers",
                    "token required by "
                    + ", ".join(globally)
                    + " through the deprecated global account.registration_token_required",
                )
            )
        for provider in providers:
            if provider.attributes.registration_token_required or site.registration_token_required:
                continue
            key = (
                "registration_token_required: true in the fragment that already defines that "
                "provider (in upstream_oauth2.providers; never in a copy: ESS appends lists)"
                if _at_least(version, (1, 19))
                else f"account.registration_token_required: true (MAS {version} is older than "
                "1.19: its providers have no key of their own, the global one gates them)"
            )
            findings.append(
                fail(
                    "upstream providers",
                    f"{provider.name} lets anyone with an account there sign up WITHOUT A "
                    f"TOKEN, the invitations protect nothing. Set {key}, {_RESTART}",
                )
            )
        return findings

    async def _token_list(self, client: MasAdminClient) -> Finding:
        try:
            # An async generator (AsyncIterator only by its annotation): close it when done.
            tokens = cast("AsyncGenerator[object]", client.list_tokens(page_size=1))
            async with contextlib.aclosing(tokens):
                async for _ in tokens:
                    break
        except OperatorError as exc:
            raise _Stopped("token list", str(exc)) from exc
        return ok("token list", "readable")


def _sign_up_shape(facts: SignUpFacts) -> Finding:
    """What MAS's /register shows and which steps the mail therefore describes."""
    if facts.sign_up == "mas-upstream":
        where = f"{facts.upstream_provider}'s login" if facts.upstream_provider else "the provider"
        shown = f"/register goes straight to {where}, no button to choose"
    elif facts.sign_up == "mas-choice" or facts.provider_buttons:
        buttons = (["a password"] if facts.password_button else []) + list(facts.provider_buttons)
        follows = facts.upstream_provider or "whichever the invitee picks"
        if facts.sign_up == "mas-password":
            follows = "the password"
        shown = f"/register shows buttons for {', '.join(buttons)}; the mail follows {follows}"
    else:
        shown = "/register goes straight to the password form"
    return ok("sign-up", f"{facts.sign_up}: {shown} ({facts.source})")


def _text(exc: BaseException) -> str:
    if isinstance(exc, httpx.RequestError):
        return f"no answer from {_request_url(exc)} ({type(exc).__name__})"
    return str(exc)


def _request_url(exc: httpx.RequestError) -> str:
    try:
        return str(exc.request.url.copy_with(query=None))
    except RuntimeError:  # an error raised before a request existed
        return "MAS"


def _unreachable(exc: httpx.RequestError, base: str) -> str:
    untrusted = certificate_error(exc)
    if untrusted is not None:
        return (
            f"{base} presented a TLS certificate we do not trust ({untrusted}): set "
            "MATRIX_INVITE_MAS_CA_BUNDLE (chart value mas.caBundle.configMap) to its CA's PEM, "
            "or use the cluster-internal http:// Service"
        )
    return f"no answer from {base} ({type(exc).__name__})"


def _at_least(version: str, wanted: tuple[int, int]) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= wanted
    except (IndexError, ValueError):
        return True  # an unparseable version is a development build: assume it is current
