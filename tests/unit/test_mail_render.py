"""Unit tests for the invitation mail's content and MIME shape (no network)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtplib.email import flatten_message
from jinja2.exceptions import SecurityError
from matrix_invite_operator.errors import ConfigurationError, InvalidSpecError
from matrix_invite_operator.mail import (
    Locale,
    MailContext,
    Mailer,
    MailRenderer,
    RenderedMail,
    build_message,
    expand_registration_url,
    format_expiry,
    message_id_for,
    validate_registration_url_template,
)
from matrix_invite_operator.mail.send import _wire_form
from pydantic import SecretStr, ValidationError

TOKEN = "Zq7Rk2Lm9Xw4"
EXPIRY = dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC)
URL = "https://auth.example.org/register"


def context(**overrides: object) -> MailContext:
    values: dict[str, object] = {
        "email": "joerg@example.org",
        "display_name": "Jörg Müller",
        "token": SecretStr(TOKEN),
        "registration_url": URL,
        "expires_at": EXPIRY,
        "usage_limit": 1,
        "inviter": "Alice Admin",
        "server_name": "example.org",
        "locale": "en",
    }
    values.update(overrides)
    return MailContext.model_validate(values)


@pytest.fixture
def renderer() -> MailRenderer:
    return MailRenderer()


def render(renderer: MailRenderer, **overrides: object) -> RenderedMail:
    return renderer.render(context(**overrides))


def parse(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


# --- content --------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", ["en", "de"])
def test_both_locales_render_token_in_bodies_never_in_subject(
    renderer: MailRenderer, locale: Locale
) -> None:
    mail = render(renderer, locale=locale)

    assert mail.subject
    assert "example.org" in mail.subject
    assert TOKEN not in mail.subject
    assert TOKEN in mail.text
    assert TOKEN in mail.html
    assert URL in mail.text
    assert f'href="{URL}"' in mail.html
    assert "Alice Admin" in mail.text
    assert "Jörg Müller" in mail.text
    assert "Jörg Müller" in mail.html


def test_token_sits_on_its_own_line_in_text_and_in_a_code_block_in_html(
    renderer: MailRenderer,
) -> None:
    mail = render(renderer)

    assert TOKEN in mail.text.splitlines()
    assert f">{TOKEN}</code></pre>" in mail.html


@pytest.mark.parametrize(
    ("locale", "greeting", "neutral"),
    [("en", "Hello Jörg Müller,", "Hello,"), ("de", "Hallo Jörg Müller,", "Guten Tag,")],
)
def test_greeting_uses_display_name_or_a_neutral_form(
    renderer: MailRenderer, locale: Locale, greeting: str, neutral: str
) -> None:
    assert render(renderer, locale=locale).text.startswith(greeting)
    assert render(renderer, locale=locale, display_name=None).text.startswith(neutral)
    assert render(renderer, locale=locale, display_name="  ").text.startswith(neutral)


@pytest.mark.parametrize(
    ("locale", "sentence"),
    [
        ("en", "the 6-digit code and the registration token are two different\nthings"),
        ("de", "Der 6-stellige Code und das Registrierungstoken sind\nzwei verschiedene Dinge"),
    ],
)
def test_says_that_the_six_digit_code_is_not_the_token(
    renderer: MailRenderer, locale: Locale, sentence: str
) -> None:
    mail = render(renderer, locale=locale)

    assert sentence in mail.text
    assert sentence.replace("\n", " ") in mail.html


@pytest.mark.parametrize(
    ("locale", "steps"),
    [
        (
            "en",
            [
                "1. Open the link",
                "2. Choose a username",
                '"Confirm password"',
                '"Registration token", paste',
                "6-digit code, enter",
                "5. Finally, you may enter a display name, or skip this step",
                "After signing up",
                "Element X",
            ],
        ),
        (
            "de",
            [
                "1. Öffnen Sie den Link",
                "2. Wählen Sie einen Benutzernamen",
                "„Passwort wiederholen“",
                "„Registrierungstoken“ gefragt",
                "6-stelligen Code gefragt",
                "5. Zum Schluss können Sie einen Anzeigenamen eingeben oder diesen Schritt",
                "Nach der Registrierung",
                "Element X",
            ],
        ),
    ],
)
def test_sign_up_steps_appear_in_order(
    renderer: MailRenderer, locale: Locale, steps: list[str]
) -> None:
    text = render(renderer, locale=locale).text
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("locale", "timezone", "expected"),
    [
        ("en", "UTC", "This invitation expires on Friday, 4 December 2026, 18:00 UTC."),
        (
            "de",
            "UTC",
            "Diese Einladung ist gültig bis Freitag, 4. Dezember 2026, 18:00 Uhr (UTC).",
        ),
        (
            "en",
            "Europe/Berlin",
            "expires on Friday, 4 December 2026, 19:00 (Europe/Berlin, UTC+1).",
        ),
        (
            "de",
            "Europe/Berlin",
            "gültig bis Freitag, 4. Dezember 2026, 19:00 Uhr (Europe/Berlin, UTC+1).",
        ),
    ],
)
def test_expiry_in_the_invitees_language_with_explicit_zone(
    renderer: MailRenderer, locale: Locale, timezone: str, expected: str
) -> None:
    mail = render(renderer, locale=locale, timezone=timezone)
    formatted = format_expiry(EXPIRY, locale=locale, timezone=timezone)

    assert expected in mail.text
    assert f"<strong>{formatted}</strong>" in mail.html


@pytest.mark.parametrize(
    ("locale", "sentence"),
    [("en", "This invitation does not expire."), ("de", "Diese Einladung läuft nicht ab.")],
)
def test_no_expiry_says_so(renderer: MailRenderer, locale: Locale, sentence: str) -> None:
    mail = render(renderer, locale=locale, expires_at=None)

    assert sentence in mail.text
    assert sentence in mail.html


def test_format_expiry_month_and_weekday_names_and_offsets() -> None:
    summer = dt.datetime(2027, 3, 29, 7, 5, tzinfo=dt.UTC)  # a Monday, after the DST switch

    assert format_expiry(summer, locale="de", timezone="Europe/Berlin") == (
        "Montag, 29. März 2027, 09:05 Uhr (Europe/Berlin, UTC+2)"
    )
    assert format_expiry(summer, locale="en", timezone="Asia/Kolkata") == (
        "Monday, 29 March 2027, 12:35 (Asia/Kolkata, UTC+5:30)"
    )
    assert format_expiry(summer, locale="en", timezone="America/New_York") == (
        "Monday, 29 March 2027, 03:05 (America/New_York, UTC-4)"
    )
    # The zone changes the date, not only the hour.
    assert format_expiry(
        dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC), locale="de", timezone="Europe/Berlin"
    ).startswith("Freitag, 1. Januar 2027, 00:30 Uhr")


def test_script_display_name_is_escaped_in_html_and_plain_in_text(
    renderer: MailRenderer,
) -> None:
    evil = "<script>alert(1)</script>"
    mail = render(renderer, display_name=evil, inviter="Eve <b>& co</b>")

    assert f"Hello {evil}," in mail.text
    assert "Eve <b>& co</b>" in mail.text
    assert "<script>" not in mail.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
    assert "Eve &lt;b&gt;&amp; co&lt;/b&gt;" in mail.html


def test_script_display_name_is_escaped_in_the_german_html_too(renderer: MailRenderer) -> None:
    evil = "<script>alert(1)</script>"
    mail = render(renderer, locale="de", display_name=evil, inviter="Eve <b>& Co</b>")

    assert f"Hallo {evil}," in mail.text
    assert "<script>" not in mail.html
    assert "<b>" not in mail.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
    assert "Eve &lt;b&gt;&amp; Co&lt;/b&gt;" in mail.html


@pytest.mark.parametrize("locale", ["en", "de"])
def test_usage_limit_line_only_when_more_than_one(renderer: MailRenderer, locale: Locale) -> None:
    marker = "up to 5 registrations" if locale == "en" else "bis zu 5 Registrierungen"

    many = render(renderer, locale=locale, usage_limit=5)
    single = render(renderer, locale=locale, usage_limit=1)

    assert marker in many.text
    assert marker in many.html
    assert "registrations" not in single.text
    assert "Registrierungen" not in single.text


def test_html_uses_no_external_resources(renderer: MailRenderer) -> None:
    html = render(renderer).html

    assert "<img" not in html
    assert "<link" not in html
    assert "<script" not in html
    assert "src=" not in html
    assert html.count("http") == html.count(URL)


def test_reprs_never_show_the_token(renderer: MailRenderer) -> None:
    ctx = context()
    mail = renderer.render(ctx)

    assert TOKEN not in repr(ctx)
    assert TOKEN not in repr(mail)


def test_builtin_templates_pass_the_startup_check(renderer: MailRenderer) -> None:
    renderer.check()


# --- admin templates ------------------------------------------------------------------------


def write_template(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_admin_override_wins_for_one_file_builtin_for_the_rest(tmp_path: Path) -> None:
    write_template(tmp_path, "de/subject.txt", "Willkommen bei {{ server_name }}!\n")
    renderer = MailRenderer(tmp_path)

    de = renderer.render(context(locale="de"))
    en = renderer.render(context(locale="en"))

    assert de.subject == "Willkommen bei example.org!"
    assert "So funktioniert die Registrierung" in de.text
    assert TOKEN in de.html
    assert en.subject == "Invitation to the Matrix server example.org"


def test_admin_html_override_is_autoescaped(tmp_path: Path) -> None:
    write_template(tmp_path, "en/body.html", "<p>{{ display_name }}: <code>{{ token }}</code></p>")
    mail = MailRenderer(tmp_path).render(context(display_name="<i>x</i>"))

    assert mail.html.startswith("<p>&lt;i&gt;x&lt;/i&gt;: <code>")


def test_admin_subject_with_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    write_template(tmp_path, "en/subject.txt", "Your token: {{ token }}")

    with pytest.raises(ConfigurationError, match="subject") as caught:
        MailRenderer(tmp_path).render(context())

    assert TOKEN not in str(caught.value)


def test_multiline_subject_is_refused(tmp_path: Path) -> None:
    write_template(tmp_path, "en/subject.txt", "Hello\nBcc: victim@example.org")

    with pytest.raises(ConfigurationError, match="more than one line"):
        MailRenderer(tmp_path).render(context())


def test_sandbox_blocks_python_internals(tmp_path: Path) -> None:
    write_template(tmp_path, "en/body.txt", "{{ token }} {{ ''.__class__.__mro__ }}")

    with pytest.raises(ConfigurationError, match="sandbox") as caught:
        MailRenderer(tmp_path).render(context())

    assert isinstance(caught.value.__cause__, SecurityError)
    assert TOKEN not in str(caught.value)


def test_undefined_variable_in_admin_template_is_a_configuration_error(tmp_path: Path) -> None:
    write_template(tmp_path, "en/body.txt", "{{ token }} {{ no_such_thing }}")

    with pytest.raises(ConfigurationError, match="no_such_thing"):
        MailRenderer(tmp_path).render(context())


def test_syntax_error_in_admin_template_names_the_file(tmp_path: Path) -> None:
    write_template(tmp_path, "de/body.html", "{% if token %}")

    with pytest.raises(ConfigurationError, match=r"de/body\.html"):
        MailRenderer(tmp_path).check()


def test_admin_body_without_token_is_refused(tmp_path: Path) -> None:
    write_template(tmp_path, "en/body.txt", "Hello, just click {{ registration_url }}")

    with pytest.raises(ConfigurationError, match="token"):
        MailRenderer(tmp_path).render(context())


def test_missing_template_dir_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        MailRenderer(tmp_path / "nope")


# --- context and registration link ----------------------------------------------------------


def test_context_rejects_naive_expiry_and_unknown_zone() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        context(expires_at=dt.datetime(2026, 12, 4, 18, 0))
    with pytest.raises(ValidationError, match="IANA"):
        context(timezone="Mars/Olympus_Mons")


def test_registration_url_is_expanded_with_quoted_values() -> None:
    url = expand_registration_url(
        "https://auth.example.org/register?token={token}&hint={email}",
        token=SecretStr("a+b/c&d"),
        email="jörg+tag@example.org",
    )

    assert url == (
        "https://auth.example.org/register?token=a%2Bb%2Fc%26d&hint=j%C3%B6rg%2Btag%40example.org"
    )
    assert expand_registration_url(URL, token=SecretStr(TOKEN), email="x@example.org") == URL


@pytest.mark.parametrize(
    "template",
    [
        "https://auth.example.org/register?u={username}",
        "https://auth.example.org/register?t={token!r}",
        "https://auth.example.org/register?t={token:>20}",
        "https://auth.example.org/register?t={0}",
        "https://auth.example.org/register?t={token",
        "ftp://auth.example.org/register",
        "/register?token={token}",
        "https://auth.example.org/register ?token={token}",
    ],
)
def test_bad_registration_url_templates_fail_at_startup(template: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_registration_url_template(template)


def test_literal_braces_in_registration_url_are_allowed() -> None:
    validate_registration_url_template("https://auth.example.org/r?x={{literal}}&t={token}")


# --- MIME message ---------------------------------------------------------------------------


def build(
    mail: RenderedMail,
    *,
    to_name: str | None = "Jörg Müller",
    seed: str = "uid-1:01FSHN9AG0MZAA6S4AF7CTV32E",
) -> EmailMessage:
    return build_message(
        mail,
        to_email="joerg@example.org",
        to_name=to_name,
        message_id_seed=seed,
        sender_email="invitations@example.org",
        sender_name="Matrix Einladungen",
        date=dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC),
    )


def test_message_is_multipart_alternative_with_text_and_html(renderer: MailRenderer) -> None:
    mail = render(renderer, locale="de")
    msg = parse(build(mail))

    assert msg.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    assert html is not None
    # The SMTP policy puts CRLF on the wire; the content is otherwise unchanged.
    assert text.get_content().replace("\r\n", "\n") == mail.text
    assert html.get_content().replace("\r\n", "\n") == mail.html
    assert msg["Subject"] == mail.subject
    assert msg["Date"] == "Fri, 27 Nov 2026 09:30:00 +0000"
    assert msg["Auto-Submitted"] == "auto-generated"


def test_non_ascii_display_name_is_rfc2047_encoded_and_decodes_back(
    renderer: MailRenderer,
) -> None:
    raw = build(render(renderer)).as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]

    head.decode("ascii")  # every header is 7-bit on the wire
    assert b"=?utf-8?" in head
    to = parse(build(render(renderer)))["To"]
    assert isinstance(to, AddressHeader)
    assert to.addresses[0].display_name == "Jörg Müller"
    assert to.addresses[0].addr_spec == "joerg@example.org"
    sender = parse(build(render(renderer)))["From"]
    assert isinstance(sender, AddressHeader)
    assert sender.addresses[0].display_name == "Matrix Einladungen"


@pytest.mark.parametrize("bad", ["Evil\r\nBcc: victim@example.org", "Evil\nX: y", "Evil\rX"])
def test_line_breaks_in_recipient_name_are_rejected(renderer: MailRenderer, bad: str) -> None:
    with pytest.raises(InvalidSpecError, match="line breaks"):
        build(render(renderer), to_name=bad)


def test_line_breaks_in_recipient_address_subject_and_sender_are_rejected(
    renderer: MailRenderer,
) -> None:
    mail = render(renderer)
    with pytest.raises(InvalidSpecError):
        build_message(
            mail,
            to_email="a@example.org\r\nBcc: b@example.org",
            to_name=None,
            message_id_seed="s",
            sender_email="invitations@example.org",
        )
    with pytest.raises(ConfigurationError):
        build(RenderedMail(subject="Hi\r\nBcc: b@example.org", text=mail.text, html=mail.html))
    with pytest.raises(ConfigurationError):
        Mailer(host="localhost", port=25, sender_email="a@example.org", sender_name="A\nB")


def test_invalid_recipient_address_is_an_invalid_spec(renderer: MailRenderer) -> None:
    with pytest.raises(InvalidSpecError, match="not a valid email address"):
        build_message(
            render(renderer),
            to_email="not an address",
            to_name=None,
            message_id_seed="s",
            sender_email="invitations@example.org",
        )


def test_message_id_is_deterministic_per_seed(renderer: MailRenderer) -> None:
    mail = render(renderer)

    first = build(mail, seed="uid-1:token-a")["Message-ID"]
    again = build(mail, seed="uid-1:token-a")["Message-ID"]
    other = build(mail, seed="uid-1:token-b")["Message-ID"]

    assert first == again
    assert first != other
    assert str(first).startswith("<")
    assert str(first).endswith("@example.org>")
    assert message_id_for("uid-1:token-a", "x@example.org") == first


def test_the_sender_keeps_its_non_ascii_display_name(renderer: MailRenderer) -> None:
    msg = parse(
        build_message(
            render(renderer),
            to_email="a@example.org",
            to_name=None,
            message_id_seed="s",
            sender_email="invites@example.org",
            sender_name="Einladungen für Jörg",
        )
    )

    sender = msg["From"]
    assert isinstance(sender, AddressHeader)
    assert sender.addresses[0].display_name == "Einladungen für Jörg"
    assert sender.addresses[0].addr_spec == "invites@example.org"
    assert str(msg["To"]) == "a@example.org"


def test_mailer_refuses_login_without_tls_unless_allowed() -> None:
    with pytest.raises(ConfigurationError, match="without TLS") as caught:
        Mailer(
            host="localhost",
            port=25,
            tls="none",
            username="bot",
            password=SecretStr("hunter2-secret"),
            sender_email="a@example.org",
        )
    assert "hunter2-secret" not in str(caught.value)

    Mailer(
        host="localhost",
        port=25,
        tls="none",
        username="bot",
        password=SecretStr("hunter2-secret"),
        allow_insecure_auth=True,
        sender_email="a@example.org",
    )


def test_mailer_reports_an_unreadable_ca_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CA bundle"):
        Mailer(
            host="localhost", port=587, ca_bundle=tmp_path / "missing.pem", sender_email="a@b.org"
        )


def test_internationalised_addresses(renderer: MailRenderer) -> None:
    msg = build_message(
        render(renderer),
        to_email="jörg@müller.example",
        to_name="Jörg",
        message_id_seed="s",
        sender_email="invitations@example.org",
    )

    to = msg["To"]
    assert isinstance(to, AddressHeader)
    # The domain goes out as punycode; the non-ASCII local part needs SMTPUTF8 at send time.
    assert to.addresses[0].addr_spec == "jörg@xn--mller-kva.example"


@pytest.mark.parametrize(
    ("to_email", "to_name", "locale"),
    [
        ("joerg@example.org", "Jörg Müller", "de"),
        ("ada@example.org", None, "en"),
        ("jörg@exämple.org", "Jörg " + "Müller-Lüdenscheidt " * 10, "de"),  # SMTPUTF8, folded
        ("a@example.org", '"Jörg" <evil@example.org>, Bcc: victim@example.org;', "en"),
        ("a@example.org", "=?utf-8?q?J=C3=B6rg?=", "en"),  # read back, goes out
    ],
)
@pytest.mark.parametrize("eight_bit", [True, False])
def test_the_mail_goes_out_as_the_email_package_writes_it(
    renderer: MailRenderer, to_email: str, to_name: str | None, locale: str, eight_bit: bool
) -> None:
    """The mailer writes `build_message`'s messages itself (issue 24: the generator parsed
    each Content-Type again, many times per mail); byte for byte what the generator writes."""
    msg = build_message(
        render(renderer, locale=locale),
        to_email=to_email,
        to_name=to_name,
        message_id_seed="uid-1:tok",
        sender_email="invitations@example.org",
        sender_name="Matrix-Einladungen für example.org",
    )
    utf8 = not to_email.isascii()
    cte_type = "8bit" if eight_bit else "7bit"

    wire = _wire_form(msg, utf8=utf8, eight_bit=eight_bit)

    assert wire == flatten_message(msg, utf8=utf8, cte_type=cte_type)
    assert b"\r\n--=_" in wire  # written here, not by the fallback to the generator
