"""Kept SMTP sessions against the real aiosmtpd double: one login for a burst of mails, closed
when idle, replaced when the relay ended it, and never used again after an error.

No control plane: real sockets to 127.0.0.1, real STARTTLS and AUTH (as test_mail_smtp.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
from matrix_invite_operator.errors import MailRejectedError, MailTemporaryError
from matrix_invite_operator.mail import Mailer
from matrix_invite_operator.settings import SecretSource
from pydantic import SecretStr

from tests.doubles.smtp import SmtpDouble

from .test_mail_smtp import PASSWORD, USER, assert_no_secrets, invitation

SEND_LOGGER = "matrix_invite_operator.mail.send"


def kept_mailer(
    double: SmtpDouble, *, keep_alive: float = 5.0, password: SecretSource | None = None
) -> Mailer:
    return Mailer(
        host="127.0.0.1",
        port=double.port,
        tls="starttls",
        username=USER,
        password=password or SecretStr(PASSWORD),
        ca_bundle=double.ca_path,
        timeout=5.0,
        sender_email="invitations@example.org",
        sender_name="Matrix-Einladungen für example.org",
        local_hostname="operator.test",
        keep_alive=keep_alive,
    )


async def wait_until_closed(double: SmtpDouble, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while double.open_sessions:
        assert time.monotonic() < deadline, f"{double.open_sessions} session(s) still open"
        await asyncio.sleep(0.02)


@pytest.fixture
def relay() -> Iterator[SmtpDouble]:
    with SmtpDouble(mode="starttls", username=USER, password=PASSWORD) as double:
        yield double


async def test_a_burst_of_mails_uses_one_session_and_one_login(relay: SmtpDouble) -> None:
    m = kept_mailer(relay)
    for n in range(3):
        await m.send(invitation(m, seed=f"uid-{n}:tok"))

    received = await relay.wait_for(3)
    assert len({r.message["Message-ID"] for r in received}) == 3
    assert relay.connections == 1
    assert relay.auth_attempts == [("PLAIN", USER, True)]
    assert relay.open_sessions == 1  # kept for the next mail
    assert PASSWORD not in repr(vars(m))  # what it keeps for the session shows no password

    await m.aclose()
    await wait_until_closed(relay)


async def test_without_keep_alive_each_mail_has_its_session(relay: SmtpDouble) -> None:
    m = kept_mailer(relay, keep_alive=0)
    await m.send(invitation(m, seed="uid-1:tok"))
    await m.send(invitation(m, seed="uid-2:tok"))

    await relay.wait_for(2)
    assert relay.connections == 2
    await wait_until_closed(relay)


async def test_an_idle_session_is_closed_and_the_next_mail_opens_one(relay: SmtpDouble) -> None:
    m = kept_mailer(relay, keep_alive=0.2)
    await m.send(invitation(m, seed="uid-1:tok"))
    assert relay.open_sessions == 1

    await wait_until_closed(relay)  # by the mailer's idle timer, no aclose

    await m.send(invitation(m, seed="uid-2:tok"))
    await relay.wait_for(2)
    assert relay.connections == 2
    await m.aclose()


@pytest.mark.parametrize("reply", ["421 4.4.2 smtp-double.test closing idle connection", None])
async def test_a_session_the_relay_ended_is_replaced_and_the_mail_sent_once(
    relay: SmtpDouble, reply: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    m = kept_mailer(relay)
    await m.send(invitation(m, seed="uid-1:tok"))
    # Ended by the relay while kept; the mailer's loop has not run since, so it tries the
    # kept session first and learns at MAIL FROM.
    assert relay.close_sessions(reply) == 1

    with caplog.at_level(logging.DEBUG, logger=SEND_LOGGER):
        await m.send(invitation(m, seed="uid-2:tok"))

    assert "closed the kept session" in caplog.text
    first, second = await relay.wait_for(2)
    assert first.message["Message-ID"] != second.message["Message-ID"]
    assert len(relay.messages) == 2  # the second mail went out once
    assert relay.connections == 2
    await m.aclose()


async def test_a_session_is_never_used_again_after_an_error(relay: SmtpDouble) -> None:
    m = kept_mailer(relay)
    await m.send(invitation(m, seed="uid-1:tok"))
    relay.reject_next(1, code=451, stage="rcpt")

    # Refused on the kept session after MAIL FROM: the caller's error, not retried here.
    with pytest.raises(MailTemporaryError, match="451") as caught:
        await m.send(invitation(m, seed="uid-2:tok"))
    assert_no_secrets(caught.value)
    assert len(relay.messages) == 1

    await m.send(invitation(m, seed="uid-2:tok"))
    await relay.wait_for(2)
    assert relay.connections == 2  # a new session after the refusal
    await m.aclose()


async def test_a_session_lost_during_data_is_not_sent_again(relay: SmtpDouble) -> None:
    m = kept_mailer(relay)
    await m.send(invitation(m, seed="uid-1:tok"))

    # The relay stores the mail and drops the session before its 250: the outcome is unknown
    # to the mailer, which must not send it again (the duplicate-mail window is the caller's).
    def drop_before_the_reply() -> None:
        relay.close_sessions(None)

    relay.on_next_message(drop_before_the_reply)

    with pytest.raises(MailTemporaryError, match="during DATA") as caught:
        await m.send(invitation(m, seed="uid-2:tok"))
    assert_no_secrets(caught.value)
    assert len(relay.messages) == 2
    assert relay.connections == 1
    await m.aclose()


async def test_a_rotated_password_is_not_sent_on_the_old_session(relay: SmtpDouble) -> None:
    current = [PASSWORD]  # the mounted Secret's file, as read at each mail
    m = kept_mailer(relay, password=lambda: SecretStr(current[0]))
    await m.send(invitation(m, seed="uid-1:tok"))
    await m.send(invitation(m, seed="uid-2:tok"))
    assert relay.connections == 1

    current[0] = "rotated-" + PASSWORD
    # A new session logs in with the new password (which this relay does not know yet).
    with pytest.raises(MailRejectedError, match="login refused") as caught:
        await m.send(invitation(m, seed="uid-3:tok"))
    assert_no_secrets(caught.value)
    assert relay.connections == 2
    assert relay.auth_attempts[0] == ("PLAIN", USER, True)
    assert [ok for _, _, ok in relay.auth_attempts[1:]] == [False] * (len(relay.auth_attempts) - 1)
    await m.aclose()
