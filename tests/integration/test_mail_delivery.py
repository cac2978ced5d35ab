"""Delivery on the real control plane: 4xx retried, 5xx stalls, the send-rate limit, resends.

Real API server, real operator process, real SMTP double over STARTTLS with AUTH; the failures
come from the double's fault knobs, never from monkeypatching the operator.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from email.headerregistry import AddressHeader

import pytest
from matrix_invite_operator.mail.throttle import WAITING_FOR_SLOT

from tests.doubles.smtp import ReceivedMessage, SmtpDouble
from tests.integration.harness import Body, InvitationsApi, condition, wait_until
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

RESEND = "matrix-invite.dev/resend"


def cond(body: Body, type_: str) -> Body:
    found = condition(body, type_)
    assert found is not None, body.get("status")
    return found


def ready(body: Body) -> Body:
    return cond(body, "Ready")


def ready_reason(body: Body) -> str | None:
    found = condition(body, "Ready")
    return str(found["reason"]) if found else None


def mails_to(smtp: SmtpDouble, address: str) -> list[ReceivedMessage]:
    return [m for m in smtp.messages if m.rcpt_tos == (address,)]


def settle(operator: OperatorProcess) -> None:
    """Let the operator do what it should not (a second mail): a whole sync pass sees it all."""
    operator.wait_for_sync_pass()


def wait_past(moment: str) -> None:
    """Until the clock is a second past an RFC 3339 time (mailSentAt has one-second resolution)."""
    at = dt.datetime.fromisoformat(moment.replace("Z", "+00:00")) + dt.timedelta(seconds=1)
    while (left := (at - dt.datetime.now(dt.UTC)).total_seconds()) > 0:
        time.sleep(left)


# --- SMTP replies ---------------------------------------------------------------------------


def test_temporary_refusals_are_retried_with_backoff_until_one_mail_is_accepted(
    invitations: InvitationsApi,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    smtp.reject_next(1, code=451, stage="rcpt")
    smtp.reject_next(1, code=452, message="4.3.1 Insufficient system storage", stage="data")
    operator = start_operator()
    invitations.apply("joerg", email="joerg@example.org", displayName="Jörg Müller", locale="en")

    deferred = invitations.wait_for(
        "joerg",
        lambda b: ready_reason(b) == "MailDeferred",
        what="deferred by the relay",
    )
    assert deferred["status"]["phase"] == "Pending"
    assert "451" in ready(deferred)["message"]
    assert cond(deferred, "Reconciling")["status"] == "True"
    assert cond(deferred, "Stalled")["status"] == "False"

    body = invitations.wait_for_phase("joerg", "Sent", timeout=40)
    assert body["status"]["mailsSent"] == 1
    settle(operator)
    (mail,) = smtp.messages  # two refusals, then exactly one accepted mail
    assert smtp.connections >= 3

    # The English mail after a real SMTP round trip and MIME parsing: umlauts intact.
    token = invitations.secret_token(body["status"]["secretName"])
    assert mail.rcpt_tos == ("joerg@example.org",)
    to = mail.message["To"]
    assert isinstance(to, AddressHeader)
    assert to.addresses[0].display_name == "Jörg Müller"
    assert "Hello Jörg Müller," in (mail.text or "")
    assert "Jörg Müller" in (mail.html or "")
    assert token in (mail.text or "")
    assert token in (mail.html or "")
    assert token not in mail.subject
    assert mail.subject == "Invitation to the Matrix server example.org"


def test_permanent_refusal_stalls_with_the_servers_reply_and_is_not_retried(
    invitations: InvitationsApi,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    reply = "5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    smtp.reject_next(1, code=550, message=reply, stage="rcpt")
    operator = start_operator()
    invitations.apply("nobody", email="nobody@example.org")

    body = invitations.wait_for_phase("nobody", "Failed")
    stalled = condition(body, "Stalled")
    assert stalled is not None
    assert (stalled["status"], stalled["reason"]) == ("True", "MailRejected")
    assert ready(body)["status"] == "False"
    assert f"550 {reply}" in ready(body)["message"]
    assert f"550 {reply}" in body["status"]["message"]
    assert "Stalled" in invitations.event_reasons("nobody")

    connections = smtp.connections
    # Kopf gave up on it (no retry follows a permanent failure), and a sync pass passed it by.
    wait_until(
        "Kopf's word that it will not retry",
        lambda: operator.log_lines("failed permanently", "550") != [],
        10,
    )
    settle(operator)
    assert smtp.connections == connections
    assert smtp.messages == []
    assert invitations.status("nobody")["phase"] == "Failed"

    # Fixing the spec is what un-stalls it: the new address gets a new token and its mail.
    invitations.patch_spec("nobody", email="somebody@example.org")
    body = invitations.wait_for_phase("nobody", "Sent")
    assert cond(body, "Stalled")["status"] == "False"
    (mail,) = smtp.wait_for_sync(1, timeout=5)
    assert mail.rcpt_tos == ("somebody@example.org",)


# --- the send-rate limit --------------------------------------------------------------------


def test_rate_limit_spaces_mails_and_shows_who_waits_for_a_slot(
    invitations: InvitationsApi,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    per_minute, count = 30, 10  # one slot every 2 s: about 18 s for all ten
    interval = 60 / per_minute
    operator = start_operator(MATRIX_INVITE_MAIL_RATE_PER_MINUTE=str(per_minute))
    names = [f"guest-{i}" for i in range(count)]
    invitations.kubectl(
        "apply",
        "-f",
        "-",
        input="---\n".join(invitations.manifest(n, email=f"{n}@example.org") for n in names),
    )

    seen_waiting: set[str] = set()
    waiting_message = ""
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline:
        items = invitations.listed()
        phases = {}
        for item in items:
            status = item.get("status") or {}
            phases[item["metadata"]["name"]] = status.get("phase")
            if ready_reason(item) == "WaitingForMailSlot":
                assert status["phase"] == "Pending"
                assert cond(item, "Reconciling")["status"] == "True"
                seen_waiting.add(item["metadata"]["name"])
                waiting_message = ready(item)["message"]
        if len(phases) == count and all(p == "Sent" for p in phases.values()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"not all Invitations were sent: {phases}")

    received = smtp.wait_for_sync(count, timeout=5)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(f"{n}@example.org" for n in names)
    # Most of them had to wait, and said so in their status.
    assert len(seen_waiting) >= count // 2, seen_waiting
    assert "at most 30 mails per minute" in waiting_message

    # What the relay saw: evenly spaced, never a burst. Counts per window, with one mail of
    # slack for the SMTP handshake's own jitter; without the limit all ten arrive within ~2 s.
    moments = sorted(m.received_at for m in received)
    window = 5 * interval
    for i, start in enumerate(moments):
        in_window = sum(1 for t in moments[i:] if t < start + window)
        assert in_window <= 5 + 1, [round(t - moments[0], 1) for t in moments]
    assert moments[-1] - moments[0] >= (count - 1) * interval - 2 * interval
    # No mail twice, nothing left waiting.
    settle(operator)
    assert len(smtp.messages) == count
    # Waiting in line is no error: Kopf's line for each throttled retry is logged at INFO.
    retries = [
        line
        for line in operator.logs().splitlines()
        if f"failed temporarily: {WAITING_FOR_SLOT}" in line
    ]
    assert retries, "each throttled retry is still logged"
    assert all("[INFO" in line for line in retries), retries[:3]


# --- resending ------------------------------------------------------------------------------


def test_resend_from_git_and_ad_hoc_mails_the_same_token_in_the_same_thread(
    invitations: InvitationsApi,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    address = "joerg@example.org"
    operator = start_operator()
    invitations.apply("joerg", email=address, displayName="Jörg Müller", locale="de")
    first = invitations.wait_for_phase("joerg", "Sent")["status"]
    (original,) = smtp.wait_for_sync(1, timeout=5)
    token = invitations.secret_token(first["secretName"])
    assert first["mailsSent"] == 1
    assert first["mailRecipient"] == address
    # German, with umlauts intact after the SMTP round trip and MIME parsing.
    assert original.subject == "Einladung zum Matrix-Server example.org"
    assert "Hallo Jörg Müller," in (original.text or "")
    assert "Jörg Müller" in (original.html or "")
    assert token in (original.text or "")
    assert token not in original.subject

    def sent_count(n: int) -> Callable[[Body], bool]:
        return lambda b: (b.get("status") or {}).get("mailsSent") == n

    # 1. From Git: a changed spec.resend mails the same token again, in the same thread.
    wait_past(first["mailSentAt"])
    invitations.patch_spec("joerg", resend="2026-01-16")
    second = invitations.wait_for("joerg", sent_count(2), what="mailed twice")["status"]
    mails = smtp.wait_for_sync(2, timeout=5)
    assert len(mails) == 2
    assert mails[1].message["Message-ID"] == original.message["Message-ID"]
    assert token in (mails[1].text or "")
    assert second["mailSentAt"] > first["mailSentAt"]
    assert second["mailRecipient"] == address
    assert second["tokenId"] == first["tokenId"]
    assert second["phase"] == "Sent"

    # 2. Ad hoc: kubectl annotate mails it once more.
    wait_past(second["mailSentAt"])
    invitations.kubectl("annotate", "invitation", "joerg", f"{RESEND}=please", "--overwrite")
    third = invitations.wait_for("joerg", sent_count(3), what="mailed three times")["status"]
    mails = smtp.wait_for_sync(3, timeout=5)
    assert mails[2].message["Message-ID"] == original.message["Message-ID"]
    assert token in (mails[2].text or "")
    assert third["mailSentAt"] > second["mailSentAt"]
    assert "MailSent" in invitations.event_reasons("joerg")

    # Re-applying the same value, or an unrelated change while the annotation is still there,
    # sends nothing new.
    invitations.kubectl("annotate", "invitation", "joerg", f"{RESEND}=please", "--overwrite")
    invitations.kubectl("label", "invitation", "joerg", "team=blue", "--overwrite")
    invitations.patch_spec("joerg", displayName="Jörg M.")
    invitations.wait_for(
        "joerg",
        lambda b: b["status"].get("observedGeneration") == b["metadata"]["generation"],
        what="reconciled after the edit",
    )
    settle(operator)
    assert len(smtp.messages) == 3
    assert invitations.status("joerg")["mailsSent"] == 3

    # A new value is a new request.
    invitations.kubectl("annotate", "invitation", "joerg", f"{RESEND}=again", "--overwrite")
    invitations.wait_for("joerg", sent_count(4), what="mailed four times")
    assert len(smtp.wait_for_sync(4, timeout=5)) == 4
    assert len(mails_to(smtp, address)) == 4
