"""The mailer against a real SMTP server (the aiosmtpd double) over real sockets and real TLS.

Nothing is mocked: every test opens TCP connections to 127.0.0.1, negotiates TLS against the
double's throwaway CA and checks what arrived (or which error came back). No control plane needed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from pathlib import Path

import pytest
from matrix_invite_operator.errors import (
    ConfigurationError,
    InvalidSpecError,
    MailError,
    MailRejectedError,
    MailTemporaryError,
)
from matrix_invite_operator.mail import (
    Locale,
    MailContext,
    Mailer,
    MailRenderer,
    RenderedMail,
    TlsMode,
)
from pydantic import SecretStr

from tests.doubles.smtp import ReceivedMessage, SmtpDouble, Stage
from tests.mail_messages import message_from

USER = "invite-bot"
PASSWORD = "s3cret-Pässw0rd"
TOKEN = "Hq4Tz8Wm2Ky6"
SENDER = "invitations@example.org"


def assert_no_secrets(exc: BaseException) -> None:
    """Neither the SMTP password nor the token may appear anywhere in an error or its causes."""
    current: BaseException | None = exc
    while current is not None:
        for text in (str(current), repr(current)):
            assert PASSWORD not in text
            assert TOKEN not in text
        current = current.__cause__ or current.__context__


def mailer(
    double: SmtpDouble,
    *,
    tls: TlsMode = "starttls",
    username: str | None = USER,
    password: str | None = PASSWORD,
    ca_bundle: Path | bool | None = True,
    allow_insecure_auth: bool = False,
) -> Mailer:
    return Mailer(
        host="127.0.0.1",
        port=double.port,
        tls=tls,
        username=username,
        password=SecretStr(password) if password is not None else None,
        ca_bundle=double.ca_path if ca_bundle is True else (ca_bundle or None),
        allow_insecure_auth=allow_insecure_auth,
        timeout=5.0,
        sender_email=SENDER,
        sender_name="Matrix-Einladungen für example.org",
        local_hostname="operator.test",
    )


def invitation(
    m: Mailer,
    *,
    locale: Locale = "de",
    seed: str = "uid-1:01TOKENID",
    to_email: str = "joerg@example.org",
) -> EmailMessage:
    rendered = MailRenderer().render(
        MailContext(
            email=to_email,
            display_name="Jörg Müller",
            token=SecretStr(TOKEN),
            registration_url="https://auth.example.org/register",
            expires_at=dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC),
            usage_limit=1,
            inviter="Änne Admin",
            server_name="example.org",
            locale=locale,
            timezone="Europe/Berlin",
        )
    )
    return message_from(m, rendered, to_email=to_email, to_name="Jörg Müller", seed=seed)


@pytest.fixture
def starttls_auth() -> Iterator[SmtpDouble]:
    with SmtpDouble(mode="starttls", username=USER, password=PASSWORD) as double:
        yield double


# --- happy paths ----------------------------------------------------------------------------


async def test_german_mail_round_trips_over_starttls_with_auth(
    starttls_auth: SmtpDouble,
) -> None:
    m = mailer(starttls_auth)
    sent = invitation(m)

    await m.send(sent)

    [received] = await starttls_auth.wait_for(1, timeout=5)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ("joerg@example.org",)
    assert received.subject == "Einladung zum Matrix-Server example.org"
    assert received.message["Message-ID"] == sent["Message-ID"]
    to = received.message["To"]
    assert isinstance(to, AddressHeader)
    assert to.addresses[0].display_name == "Jörg Müller"
    sender = received.message["From"]
    assert isinstance(sender, AddressHeader)
    assert sender.addresses[0].display_name == "Matrix-Einladungen für example.org"

    text, html = received.text, received.html
    assert text is not None
    assert html is not None
    assert "Hallo Jörg Müller," in text
    assert "Jörg Müller" in html
    assert "Änne Admin lädt Sie ein" in text
    assert TOKEN in text
    assert TOKEN in html
    assert "6-stellige Code und das Registrierungstoken" in text
    assert "19:00 Uhr (Europe/Berlin, UTC+1)" in text

    assert starttls_auth.auth_attempts == [("PLAIN", USER, True)]
    assert TOKEN not in received.subject


async def test_implicit_tls_works() -> None:
    with SmtpDouble(mode="implicit", username=USER, password=PASSWORD) as double:
        m = mailer(double, tls="implicit")
        await m.send(invitation(m, locale="en"))

        [received] = await double.wait_for(1)
    assert received.subject == "Invitation to the Matrix server example.org"
    assert received.text is not None
    assert TOKEN in received.text


async def test_plain_relay_with_explicit_insecure_auth_opt_in() -> None:
    with SmtpDouble(mode="plain", username=USER, password=PASSWORD) as double:
        m = mailer(double, tls="none", allow_insecure_auth=True)
        await m.send(invitation(m))

        await double.wait_for(1)
        assert double.auth_attempts[0][1:] == (USER, True)


async def test_resending_the_same_token_keeps_the_message_id(starttls_auth: SmtpDouble) -> None:
    m = mailer(starttls_auth)
    await m.send(invitation(m, seed="uid-1:tok-1"))
    await m.send(invitation(m, seed="uid-1:tok-1"))
    await m.send(invitation(m, seed="uid-1:tok-2"))

    first, again, other = await starttls_auth.wait_for(3)
    assert first.message["Message-ID"] == again.message["Message-ID"]
    assert first.message["Message-ID"] != other.message["Message-ID"]


async def test_non_ascii_recipient_goes_out_with_smtputf8(starttls_auth: SmtpDouble) -> None:
    m = mailer(starttls_auth)
    await m.send(invitation(m, to_email="jörg@example.org"))

    [received] = await starttls_auth.wait_for(1)
    assert received.rcpt_tos == ("jörg@example.org",)
    to = received.message["To"]
    assert isinstance(to, AddressHeader)
    assert to.addresses[0].addr_spec == "jörg@example.org"


# --- refusals before any socket ---------------------------------------------------------------


async def test_credentials_over_plain_text_are_refused_before_connecting() -> None:
    with SmtpDouble(mode="plain", username=USER, password=PASSWORD) as double:
        with pytest.raises(ConfigurationError, match="without TLS") as caught:
            mailer(double, tls="none")

        assert double.connections == 0
        assert double.auth_attempts == []
        assert double.messages == []
    assert_no_secrets(caught.value)


# --- failures, mapped ---------------------------------------------------------------------------


async def test_untrusted_certificate_is_reported_as_such(starttls_auth: SmtpDouble) -> None:
    # No CA bundle: the system trust store does not know the double's CA.
    m = mailer(starttls_auth, ca_bundle=None)

    with pytest.raises(MailError, match="certificate") as caught:
        await m.send(invitation(m))

    # Waiting does not make a certificate trusted: a human must set the CA bundle.
    assert isinstance(caught.value, MailRejectedError)
    assert "CA bundle" in str(caught.value)
    assert starttls_auth.auth_attempts == []
    assert starttls_auth.messages == []
    assert_no_secrets(caught.value)


async def test_certificate_from_unknown_ca_fails_even_with_our_bundle() -> None:
    with SmtpDouble(mode="implicit", username=USER, password=PASSWORD) as double:
        double.break_tls()
        m = mailer(double, tls="implicit")

        with pytest.raises(MailRejectedError, match="certificate is not trusted") as caught:
            await m.send(invitation(m))

        double.fix_tls()
        await m.send(invitation(m))
        await double.wait_for(1)
    assert_no_secrets(caught.value)


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_451_is_temporary(starttls_auth: SmtpDouble, stage: Stage) -> None:
    starttls_auth.reject_next(
        1, code=451, message="4.7.1 Greylisted, please try again later", stage=stage
    )
    m = mailer(starttls_auth)

    with pytest.raises(MailTemporaryError, match=r"451 4\.7\.1 Greylisted") as caught:
        await m.send(invitation(m))
    assert_no_secrets(caught.value)

    # The fault was for one attempt only: the retry goes through.
    await m.send(invitation(m))
    await starttls_auth.wait_for(1)


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_550_is_rejected_with_the_servers_reply(
    starttls_auth: SmtpDouble, stage: Stage
) -> None:
    reply = "5.1.1 <joerg@example.org>: Recipient address rejected: User unknown"
    starttls_auth.reject_next(1, code=550, message=reply, stage=stage)
    m = mailer(starttls_auth)

    with pytest.raises(MailRejectedError) as caught:
        await m.send(invitation(m))

    assert f"550 {reply}" in str(caught.value)
    assert starttls_auth.messages == []
    assert_no_secrets(caught.value)


async def test_wrong_password_is_rejected_login(starttls_auth: SmtpDouble) -> None:
    m = mailer(starttls_auth, password="wrong-" + PASSWORD)

    with pytest.raises(MailRejectedError, match=f"SMTP login refused for user '{USER}'") as caught:
        await m.send(invitation(m))

    assert "535" in str(caught.value)
    assert "wrong-" not in str(caught.value)
    assert all(not accepted for _, _, accepted in starttls_auth.auth_attempts)
    assert starttls_auth.messages == []
    assert_no_secrets(caught.value)


async def test_connection_refused_is_temporary_and_recovers(starttls_auth: SmtpDouble) -> None:
    m = mailer(starttls_auth)
    starttls_auth.refuse_connections()

    with pytest.raises(MailTemporaryError, match="connection refused") as caught:
        await m.send(invitation(m))
    assert_no_secrets(caught.value)

    starttls_auth.accept_connections()
    await m.send(invitation(m))
    await starttls_auth.wait_for(1)


async def test_relay_without_starttls_is_rejected_not_downgraded() -> None:
    with SmtpDouble(mode="plain", username=USER, password=PASSWORD) as double:
        m = mailer(double, tls="starttls")

        with pytest.raises(MailRejectedError, match="does not offer STARTTLS") as caught:
            await m.send(invitation(m))

        assert double.auth_attempts == []
        assert double.messages == []
    assert_no_secrets(caught.value)


# --- the double itself ----------------------------------------------------------------------


async def test_double_writes_maildir_and_times_out_waiting(tmp_path: Path) -> None:
    seen: list[ReceivedMessage] = []
    with SmtpDouble(mode="plain", maildir=tmp_path / "mail", on_message=seen.append) as double:
        with pytest.raises(TimeoutError):
            await double.wait_for(1, timeout=0.1)

        m = mailer(double, tls="none", username=None, password=None)
        await m.send(invitation(m))
        double.wait_for_sync(1, timeout=5)

    files = list((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 1
    assert b"Subject: Einladung zum Matrix-Server example.org" in files[0].read_bytes()
    assert [r.subject for r in seen] == ["Einladung zum Matrix-Server example.org"]


async def test_double_requires_auth_when_it_has_credentials(starttls_auth: SmtpDouble) -> None:
    m = mailer(starttls_auth, username=None, password=None)

    with pytest.raises(MailRejectedError, match="530"):
        await m.send(invitation(m))
    assert starttls_auth.messages == []


# --- header injection -------------------------------------------------------------------------

#: The header lines the operator writes, in order; nothing else may reach the relay.
OWN_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
]

HOSTILE_NAMES = {
    # Encoded words whose decoded text holds a line break (CVE-2024-6923 on Python < 3.11.10).
    "encoded-crlf-bcc": "=?utf-8?q?Evil=0D=0ABcc:_victim@example.org?=",
    "encoded-blank-line": "=?utf-8?q?Evil=0D=0A=0D=0AYou_won_a_prize?=",
    "encoded-base64-bcc": "=?utf-8?b?RXZpbA0KQmNjOiB2aWN0aW1AZXhhbXBsZS5vcmc=?=",
    "encoded-lone-lf": "=?utf-8?q?Evil=0ABcc:_victim@example.org?=",
    "encoded-vertical-tab": "=?utf-8?q?Evil=0BBcc?=",
    # Harmless, however odd: these go out, and must stay inside their own header line.
    "encoded-umlaut": "=?utf-8?q?J=C3=B6rg?=",
    "quotes-and-specials": '"Jörg" <evil@example.org>, Bcc: victim@example.org;',
    "rtl-marks": "\u202eJörg\u202c \u200fMüller\u200f",
    "folding": "Jörg " + "Müller-Lüdenscheidt " * 10,
    "crlf-look-alike": "Jörg =0D=0A Bcc: victim@example.org",
}
REFUSED = {k for k in HOSTILE_NAMES if k.startswith("encoded-") and k != "encoded-umlaut"}


def header_names(raw: bytes) -> list[str]:
    """The header field names of a raw message as the relay received it (continuations
    unfolded); a blank line ends the header block, as it does for every mail client."""
    names: list[str] = []
    for line in re.split(rb"\r\n|\r|\n", raw):  # a bare CR or LF ends a line for many readers
        if not line:
            return names
        if line[:1] not in (b" ", b"\t"):
            names.append(line.split(b":", 1)[0].decode("ascii", "replace"))
    return names


def rendered_for(display_name: str | None) -> RenderedMail:
    """The English mail, with `display_name` as the invitee and as the inviter."""
    return MailRenderer().render(
        MailContext(
            email="joerg@example.org",
            display_name=display_name,
            token=SecretStr(TOKEN),
            registration_url="https://auth.example.org/register",
            expires_at=dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC),
            usage_limit=1,
            inviter=display_name or "Änne",
            server_name="example.org",
            locale="en",
            timezone="Europe/Berlin",
        )
    )


def hostile_mail(m: Mailer, display_name: str) -> EmailMessage:
    return message_from(
        m,
        rendered_for(display_name),
        to_email="joerg@example.org",
        to_name=display_name,
        seed="uid:tok",
    )


@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
async def test_display_names_never_add_a_header_line(starttls_auth: SmtpDouble, case: str) -> None:
    name = HOSTILE_NAMES[case]
    m = mailer(starttls_auth)

    if case in REFUSED:
        with pytest.raises(InvalidSpecError, match=r"spec\.displayName") as caught:
            await m.send(hostile_mail(m, name))
        assert "line" in str(caught.value)
        assert starttls_auth.connections == 0
        return

    await m.send(hostile_mail(m, name))
    [received] = await starttls_auth.wait_for(1, timeout=5)
    assert header_names(received.raw) == OWN_HEADERS
    assert received.rcpt_tos == ("joerg@example.org",)
    to = received.message["To"]
    assert isinstance(to, AddressHeader)
    assert [a.addr_spec for a in to.addresses] == ["joerg@example.org"]
    assert received.message["Bcc"] is None
    assert received.text is not None
    assert received.html is not None
    assert received.text.startswith("Hello ")
    assert TOKEN in received.text
    assert TOKEN in received.html


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_sender_name_that_decodes_to_a_line_break_fails_at_startup(
    starttls_auth: SmtpDouble, case: str
) -> None:
    with pytest.raises(ConfigurationError, match="MATRIX_INVITE_MAIL_FROM_NAME"):
        Mailer(
            host="127.0.0.1",
            port=starttls_auth.port,
            sender_email=SENDER,
            sender_name=HOSTILE_NAMES[case],
            ca_bundle=starttls_auth.ca_path,
        )


async def test_a_subject_that_decodes_to_a_line_break_is_refused(
    starttls_auth: SmtpDouble,
) -> None:
    m = mailer(starttls_auth)
    rendered = rendered_for(None)
    injected = dataclasses.replace(rendered, subject=HOSTILE_NAMES["encoded-crlf-bcc"])
    with pytest.raises(ConfigurationError, match="subject"):
        message_from(m, injected, to_email="joerg@example.org", to_name=None, seed="s")
