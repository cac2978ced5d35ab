"""Rendering the invitation mail: context model, registration-link expansion, Jinja templates.

This module owns what the invitee reads: the subject, the plain-text body and the HTML body, in
English or German. It is pure apart from loading templates: no SMTP, no clock, no Kubernetes.

Templates run in Jinja's sandbox because admins may supply their own (`template_dir/<locale>/`
overrides the built-in files one by one). Whatever a template does, two promises hold: the
subject never carries the token, and errors never echo it.

Variables available to templates:
    display_name      str | None  the invitee's name from the Invitation
    email             str         the invitee's address
    token             str         the registration token (plain text; HTML escapes it)
    registration_url  str         the sign-up link, placeholders already expanded
    expires_at_text   str | None  the expiry in the invitee's language and time zone, or None
    usage_limit       int         how many registrations the token allows
    inviter           str         who invites
    server_name       str         the Matrix server name
    locale            str         the language being rendered: a folder of `templates/`
    sign_up           how the invitee signs up (`sign_up.py` picks it the way MAS's `/register`
                      does, from site-config and the enabled upstream providers):
                        "mas-password"  MAS's password registration (with its 6-digit email code)
                        "mas-upstream"  MAS's only way in is one upstream provider: `/register`
                                        redirects straight to its login (no button to choose)
                        "mas-choice"    MAS's "Create an account" page with a button per provider
                                        (and one for a password): the invitee picks a provider
                        "synapse"       a Matrix client such as Element that asks Synapse
    upstream_provider str | None  the provider whose steps the mail describes, or None when not
                                  known (the templates then describe it)
    provider_buttons  tuple[str, ...]  the provider names on MAS's "Create an account" page, in
                                  MAS's order; empty when MAS shows no such page
    password_button   bool        that page also offers password sign-up ("Continue with email
                                  address", or "Continue with password" without the email code)
    enrollment        bool        an enrollment link is the mail's first step (`enrollment_url`):
                                  the steps then log in with the account just created
    email_code        bool        MAS asks for the 6-digit code it emails (password sign-up)
    captcha           bool        MAS's sign-up form asks for a CAPTCHA
    element_web_url   str | None  where to log in with Element Web after signing up
    invite_url        str | None  the invitee's invite page link (`https://<host>/<locale>/#<token>`)
                                  when the invite page is enabled: the mail's main call to action
    enrollment_url    str | None  the invitee's single-use authentik enrollment link (authentik
                                  configured): the mail's first step; a secret like the token
    account_provider  str         who holds the invitee's login account: the upstream provider's
                                  name, else "authentik"
    account_url       str | None  without authentik settings: where invitees get an account
    account_contact   str | None  without either: whom invitees ask for an account

`<locale>/enrollment.txt` and `.html` (included by the bodies) hold the account step.

`body.html` wraps the sign-up steps in `{% block sign_up_steps %}`: the invite page renders that
block (`MailRenderer.sign_up_steps`), so the page and the mail say the same thing from one source.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import string
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

import jinja2
import markupsafe
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..errors import ConfigurationError
from ..locales import LOCALES, Locale, require_locale, strings

SignUp = Literal["mas-password", "mas-upstream", "mas-choice", "synapse"]
SIGN_UPS: tuple[SignUp, ...] = ("mas-password", "mas-upstream", "mas-choice", "synapse")
UPSTREAM_PROVIDER_MAX_LENGTH = 100
PROVIDER_BUTTONS_MAX = 20
TEMPLATE_FILES: tuple[str, ...] = ("subject.txt", "body.txt", "body.html")

SAMPLE_ENROLLMENT_URL = SecretStr(
    "https://auth.example.org/if/flow/sample/?itoken=00000000-0000-4000-8000-000000000000"
)
_URL_PLACEHOLDERS = frozenset({"token", "email"})
STEPS_BLOCK = "sign_up_steps"
_INLINE_STYLE = re.compile(r'\sstyle="[^"]*"')

_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu", "Universal"})


class MailContext(BaseModel):
    """Everything one invitation mail says, already resolved (link expanded, locale chosen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    email: str = Field(min_length=3, max_length=254)
    display_name: str | None = None
    token: SecretStr
    registration_url: str = Field(min_length=1)
    expires_at: dt.datetime | None = None
    usage_limit: int = Field(1, ge=1)
    inviter: str = Field(min_length=1)
    server_name: str = Field(min_length=1)
    locale: Locale = "en"
    timezone: str = "UTC"
    sign_up: SignUp = "mas-password"
    upstream_provider: str | None = Field(None, max_length=UPSTREAM_PROVIDER_MAX_LENGTH)
    provider_buttons: tuple[str, ...] = Field((), max_length=PROVIDER_BUTTONS_MAX)
    password_button: bool = False
    email_code: bool = True
    captcha: bool = False
    element_web_url: str | None = None
    invite_url: str | None = None
    enrollment_url: SecretStr | None = None
    account_url: str | None = None
    account_contact: str | None = Field(None, max_length=200)

    @field_validator("element_web_url", "invite_url", "account_url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        if any(c in value for c in "\r\n\t <>\"'"):
            raise ValueError("must not contain whitespace, quotes or angle brackets")
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        # A naive datetime would be rendered in whatever zone the pod happens to run in.
        if value is not None and value.utcoffset() is None:
            raise ValueError("expires_at must carry a time zone")
        return value

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        return require_locale(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @field_validator("display_name", "upstream_provider")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None

    @field_validator("upstream_provider")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("must be a single line")
        return value

    @field_validator("provider_buttons")
    @classmethod
    def _button_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name.strip() or len(name) > UPSTREAM_PROVIDER_MAX_LENGTH:
                raise ValueError(
                    f"each name must be 1 to {UPSTREAM_PROVIDER_MAX_LENGTH} characters"
                )
            if "\r" in name or "\n" in name:
                raise ValueError("each name must be a single line")
        return value

    def steps(self) -> SignUpSteps:
        """The parts of this mail that the sign-up steps depend on."""
        return SignUpSteps(
            locale=self.locale,
            server_name=self.server_name,
            sign_up=self.sign_up,
            upstream_provider=self.upstream_provider,
            email_code=self.email_code,
            captcha=self.captcha,
            element_web_url=self.element_web_url,
            provider_buttons=self.provider_buttons,
            password_button=self.password_button,
            enrollment=self.enrollment_url is not None,
        )


@dataclass(frozen=True)
class SignUpSteps:
    """What the sign-up steps depend on: the parts of `MailContext` that are not per invitee."""

    locale: Locale
    server_name: str
    sign_up: SignUp = "mas-password"
    upstream_provider: str | None = None
    email_code: bool = True
    captcha: bool = False
    element_web_url: str | None = None
    provider_buttons: tuple[str, ...] = ()
    password_button: bool = False
    enrollment: bool = False  # the mail's first step created the account (enrollment.*)

    def variables(self) -> dict[str, object]:
        """The template variables the `sign_up_steps` block uses."""
        return {
            "sign_up": self.sign_up,
            "upstream_provider": self.upstream_provider,
            "provider_buttons": self.provider_buttons,
            "password_button": self.password_button,
            "enrollment": self.enrollment,
            "email_code": self.email_code,
            "captcha": self.captcha,
            "server_name": self.server_name,
            "element_web_url": self.element_web_url,
        }


@dataclass(frozen=True)
class RenderedMail:
    """The three rendered parts. Bodies contain the token, so they stay out of the repr."""

    subject: str
    text: str = field(repr=False)
    html: str = field(repr=False)


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{name!r} is not a known IANA time zone (e.g. UTC, Europe/Berlin)"
        ) from exc


def _offset_label(offset: dt.timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def format_expiry(moment: dt.datetime, *, locale: Locale, timezone: str = "UTC") -> str:
    """The expiry as a sentence fragment with an explicit zone, e.g. "Friday, 4 December 2026,
    18:00 UTC" or "Freitag, 4. Dezember 2026, 18:00 Uhr (UTC)"."""
    if moment.utcoffset() is None:
        raise ValueError("expiry must carry a time zone")
    local = moment.astimezone(_zone(timezone))
    words = strings(locale)  # the language's names and order, from its strings.json
    offset = local.utcoffset() or dt.timedelta(0)
    # The IANA name plus the offset: abbreviations such as "CST" mean different zones to
    # different readers, and the offset alone hides daylight-saving changes.
    utc = timezone in _UTC_NAMES
    return (words.expiry_utc if utc else words.expiry).format(
        weekday=words.weekdays[local.weekday()],
        day=local.day,
        month=words.months[local.month - 1],
        year=local.year,
        clock=f"{local.hour:02d}:{local.minute:02d}",
        zone="UTC" if utc else f"{timezone}, {_offset_label(offset)}",
    )


# --- registration link --------------------------------------------------------------------


def validate_registration_url_template(template: str) -> None:
    """Fail at startup unless `template` is an http(s) URL using only {token} and {email}."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise ConfigurationError(
            f"registration URL template {template!r} is malformed ({exc}); write literal braces "
            "as {{ and }}"
        ) from exc
    for name, spec, conversion in fields:
        if name not in _URL_PLACEHOLDERS or spec or conversion:
            shown = (
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            raise ConfigurationError(
                f"registration URL template {template!r} uses placeholder {shown}; only {{token}} "
                "and {email} are allowed"
            )
    probe = template.format_map({"token": "t", "email": "e"})
    parts = urlsplit(probe)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigurationError(
            f"registration URL template {template!r} must be an absolute http(s) URL"
        )
    if any(c in probe for c in "\r\n\t <>\"'"):
        raise ConfigurationError(
            f"registration URL template {template!r} contains whitespace, quotes or angle brackets"
        )


def expand_registration_url(template: str, *, token: SecretStr, email: str) -> str:
    """Fill {token} and {email} into the link, URL-quoted (a token may contain '+', '/', '&')."""
    validate_registration_url_template(template)
    return template.format(
        token=quote(token.get_secret_value(), safe=""), email=quote(email, safe="")
    )


def invite_link(base_url: str, locale: Locale, token: SecretStr) -> str:
    """The link to the invite page (`invite_page/`): the token in the URL fragment, which
    browsers never send to any server."""
    return f"{base_url.rstrip('/')}/{locale}/#{quote(token.get_secret_value(), safe='')}"


# --- templates ----------------------------------------------------------------------------


class MailRenderer:
    """Renders `MailContext` into a `RenderedMail` with sandboxed, overridable templates."""

    def __init__(self, template_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if template_dir is not None:
            if not template_dir.is_dir():
                raise ConfigurationError(f"mail template directory {template_dir} does not exist")
            # Looked up first, file by file: an admin may override just the subject.
            loaders.append(jinja2.FileSystemLoader(template_dir))
        builtin = jinja2.PackageLoader("matrix_invite_operator.mail", "templates")
        loaders.append(builtin)
        self.template_dir = template_dir
        self._env = _environment(jinja2.ChoiceLoader(loaders))
        self._builtin = _environment(builtin)

    def render(self, ctx: MailContext) -> RenderedMail:
        token = ctx.token.get_secret_value()
        enrollment = ctx.enrollment_url.get_secret_value() if ctx.enrollment_url else None
        variables = {
            **ctx.steps().variables(),
            "display_name": ctx.display_name,
            "email": ctx.email,
            "token": token,
            "registration_url": ctx.registration_url,
            "expires_at_text": (
                format_expiry(ctx.expires_at, locale=ctx.locale, timezone=ctx.timezone)
                if ctx.expires_at is not None
                else None
            ),
            "usage_limit": ctx.usage_limit,
            "inviter": ctx.inviter,
            "locale": ctx.locale,
            "invite_url": ctx.invite_url,
            "enrollment_url": enrollment,
            "account_provider": ctx.upstream_provider or "authentik",
            "account_url": ctx.account_url,
            "account_contact": ctx.account_contact,
        }
        subject = self._render_one(f"{ctx.locale}/subject.txt", variables, token).strip()
        text = self._render_one(f"{ctx.locale}/body.txt", variables, token)
        html = self._render_one(f"{ctx.locale}/body.html", variables, token)

        if not subject:
            raise ConfigurationError(f"mail template {ctx.locale}/subject.txt renders empty")
        if "\r" in subject or "\n" in subject:
            raise ConfigurationError(
                f"mail template {ctx.locale}/subject.txt renders more than one line"
            )
        # Subjects end up in mail logs, notification previews and spam reports; the token must
        # only live in the body. Case-sensitive on purpose: MAS compares tokens that way, and a
        # case-insensitive check would trip over short admin-chosen tokens that are plain words.
        if token and token in subject:
            raise ConfigurationError(
                f"mail template {ctx.locale}/subject.txt puts the registration token into the "
                "subject; keep it in the body only"
            )
        if token and (token not in text or str(markupsafe.escape(token)) not in html):
            raise ConfigurationError(
                f"mail templates for locale {ctx.locale} must show the registration token in both "
                "body.txt and body.html"
            )
        if enrollment and (enrollment in subject or enrollment not in text):
            raise ConfigurationError(
                f"mail templates for locale {ctx.locale} must show the authentik enrollment link "
                "in the body (enrollment.txt), never in the subject"
            )
        if enrollment and str(markupsafe.escape(enrollment)) not in html:
            raise ConfigurationError(
                f"mail template {ctx.locale}/body.html must show the authentik enrollment link "
                "(enrollment.html)"
            )
        return RenderedMail(subject=subject, text=_tidy_text(text), html=html.strip() + "\n")

    def sign_up_steps(self, steps: SignUpSteps) -> markupsafe.Markup:
        """The mail's sign-up steps as an HTML fragment, for the invite page.

        Renders only the `sign_up_steps` block of `<locale>/body.html` (an admin's override when
        it defines that block, else the built-in one), without the mail's inline styles: the
        page styles them itself and its Content-Security-Policy forbids inline styles.
        """
        name = f"{steps.locale}/body.html"
        variables = steps.variables()
        try:
            template = self._env.get_template(name)
            if STEPS_BLOCK not in template.blocks:
                template = self._builtin.get_template(name)
            html = "".join(template.blocks[STEPS_BLOCK](template.new_context(variables)))
        except jinja2.TemplateError as exc:
            raise ConfigurationError(f"mail template {name}, block {STEPS_BLOCK}: {exc}") from exc
        # The block's output is already escaped (autoescaping template); attribute values hold
        # no raw '"', so this removes whole style attributes and nothing else.
        return markupsafe.Markup(_INLINE_STYLE.sub("", html).strip())  # noqa: S704

    def check(self, *, enrollment: bool = False) -> None:
        """Render every locale and sign-up once with sample values: broken admin templates fail
        at startup. `enrollment` (authentik configured): with an enrollment link too, which an
        admin's body templates must then show (the built-in ones include `enrollment.*`)."""
        # Every branch the built-in templates have: password sign-up with and without the email
        # code, with a CAPTCHA, beside provider buttons; one provider (named or not); MAS's page
        # of buttons with and without a password button; Synapse.
        web = "https://app.example.org"
        shapes: tuple[dict[str, object], ...] = (
            {"sign_up": "mas-password", "element_web_url": web},
            {"sign_up": "mas-password", "email_code": False, "captcha": True},
            {"sign_up": "mas-password", "provider_buttons": ("Sample",), "password_button": True},
            {"sign_up": "mas-upstream", "upstream_provider": "Sample Provider"},
            {"sign_up": "mas-upstream", "element_web_url": web},
            {
                "sign_up": "mas-choice",
                "upstream_provider": "Sample",
                "provider_buttons": ("Sample", "Other"),
            },
            {
                "sign_up": "mas-choice",
                "provider_buttons": ("Sample", "Other"),
                "password_button": True,
            },
            {
                "sign_up": "mas-choice",
                "provider_buttons": ("Sample",),
                "password_button": True,
                "email_code": False,
            },
            {"sign_up": "synapse"},
        )
        invite_urls = (None, "https://invite.example.org/en/#SampleToken12")
        for locale, shape, invite_url in itertools.product(LOCALES, shapes, invite_urls):
            context = MailContext.model_validate(
                {
                    "email": "invitee@example.org",
                    "display_name": "Sample Invitee",
                    "token": SecretStr("SampleToken12"),
                    "registration_url": "https://auth.example.org/register",
                    "expires_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
                    "usage_limit": 2,
                    "inviter": "Sample Admin",
                    "server_name": "example.org",
                    "locale": locale,
                    "invite_url": invite_url,
                    "enrollment_url": SAMPLE_ENROLLMENT_URL if enrollment and invite_url else None,
                    **shape,
                }
            )
            self.render(context)
            self.sign_up_steps(context.steps())

    def _render_one(self, name: str, variables: Mapping[str, object], token: str) -> str:
        try:
            return self._env.get_template(name).render(variables)
        except SecurityError as exc:
            raise ConfigurationError(
                f"mail template {name} tried something the sandbox forbids: {_scrub(exc, token)}"
            ) from exc
        except jinja2.TemplateNotFound as exc:
            raise ConfigurationError(f"mail template {name} not found") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigurationError(
                f"mail template {exc.name or name} line {exc.lineno}: {exc.message}"
            ) from exc
        except jinja2.TemplateError as exc:
            raise ConfigurationError(f"mail template {name}: {_scrub(exc, token)}") from exc


def _environment(loader: jinja2.BaseLoader) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=loader,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm"), default_for_string=False, default=False
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _scrub(exc: BaseException, token: str) -> str:
    # Jinja messages name attributes and types, not values, but an admin template could build
    # an error message from the token itself; never let it reach the status or the log.
    text = str(exc)
    return text.replace(token, "<token>") if token else text


def _tidy_text(text: str) -> str:
    # Trailing blanks left by template indentation are noise (and some relays mangle them);
    # the one exception is the "-- " signature separator, which mail clients recognise.
    lines = text.strip("\n").splitlines()
    return "\n".join(line if line == "-- " else line.rstrip() for line in lines) + "\n"
