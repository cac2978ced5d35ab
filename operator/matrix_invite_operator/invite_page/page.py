"""Renders the invite page for each locale, once, from the settings and the mail's own steps.

Owns the page's wording (besides the steps, which come from the mail's `sign_up_steps` block so
that page and mail never disagree), the link format the mail uses, the choice of language from
`Accept-Language`. Whether the continue button may carry the token is the backend's to say
(its provider kind's `prefills_token`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

import jinja2

from ..errors import ConfigurationError
from ..locales import LOCALES, Locale, strings
from ..mail.render import MailRenderer, SignUpSteps, invite_link
from ..providers import KINDS
from ..providers.mas import TOKEN_PREFILL_SINCE, prefills_token
from ..settings import Settings

__all__ = [
    "STATIC_FILES",
    "TOKEN_PREFILL_SINCE",
    "InvitePage",
    "build_invite_page",
    "invite_link",
    "negotiate_locale",
    "prefills_token",
]

STATIC_FILES: dict[str, str] = {
    "invite.js": "text/javascript; charset=utf-8",
    "invite.css": "text/css; charset=utf-8",
}

# Each locale's texts and name live beside its mail templates (<locale>/strings.json).
LANGUAGE_NAMES: dict[Locale, str] = {locale: strings(locale).language_name for locale in LOCALES}


def negotiate_locale(accept_language: str | None, default: Locale) -> Locale:
    """The first of our languages the browser lists (quality order), else `default`."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag:
            ranked.append((-quality, position, tag.split("-")[0].lower()))
    for negative_quality, _, language in sorted(ranked):
        if negative_quality < 0 and language in LOCALES:
            return language
    return default


@dataclass(frozen=True)
class InvitePage:
    """The rendered page per locale and its static files, ready to serve."""

    pages: dict[Locale, bytes]
    static: dict[str, bytes] = field(repr=False)
    default_locale: Locale = "en"


def _continue_url(settings: Settings) -> str:
    url = settings.registration_url
    if any(name for _, name, _, _ in string.Formatter().parse(url) if name is not None):
        raise ConfigurationError(
            "the invite page links to MATRIX_INVITE_REGISTRATION_URL, which must then be MAS's "
            f"plain sign-up URL (such as https://auth.example.org/register), not {url!r}"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigurationError(f"MATRIX_INVITE_REGISTRATION_URL {url!r} is not an http(s) URL")
    return url


def build_invite_page(settings: Settings, *, prefill: bool | None = None) -> InvitePage:
    """Render every locale once. `prefill` overrides the backend's answer (for tests)."""
    kind = KINDS[settings.backend]
    facts = kind.sign_up_facts(settings)
    if facts.server_name is None:
        raise ConfigurationError(
            "the invite page needs the server name: set MATRIX_INVITE_SERVER_NAME "
            "(chart value invitations.serverName); it cannot ask MAS, having no credentials"
        )
    continue_url = _continue_url(settings)
    if prefill is None:
        prefill = kind.prefills_token(settings)
    renderer = MailRenderer(settings.mail_template_dir)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("matrix_invite_operator.invite_page", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("page.html")
    pages: dict[Locale, bytes] = {}
    for locale in LOCALES:
        texts = {
            key: value.format(server=facts.server_name)
            for key, value in strings(locale).invite_page.items()
        }
        steps = renderer.sign_up_steps(
            SignUpSteps(
                locale=locale,
                server_name=facts.server_name,
                sign_up=facts.sign_up,
                upstream_provider=facts.upstream_provider,
                email_code=settings.invite_page_email_code,
                captcha=settings.invite_page_captcha,
                element_web_url=str(settings.element_web_url) if settings.element_web_url else None,
            )
        )
        html = template.render(
            locale=locale,
            texts=texts,
            languages=LANGUAGE_NAMES,
            server_name=facts.server_name,
            continue_url=continue_url,
            prefill=prefill,
            steps=steps,
        )
        pages[locale] = html.encode("utf-8")
    static_dir = resources.files("matrix_invite_operator.invite_page") / "static"
    static = {name: (static_dir / name).read_bytes() for name in STATIC_FILES}
    return InvitePage(pages=pages, static=static, default_locale=settings.default_locale)
