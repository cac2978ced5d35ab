"""An applied Invitation becomes a MAS token, an owned Secret, one mail and a Ready status."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi, condition, wait_until
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def test_invitation_is_issued_stored_mailed_and_reported(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).replace(microsecond=0)
    invitations.apply(
        "ada",
        email="ada@example.org",
        displayName="Ada Lovelace",
        usageLimit=2,
        expiresAt=expires.isoformat().replace("+00:00", "Z"),
    )
    body = invitations.wait_for_phase("ada", "Sent", timeout=30)
    status = body["status"]
    assert status["valid"] is True
    assert status["timesUsed"] == 0
    assert status["expired"] is False
    assert status["usageLimit"] == 2
    assert status["expiresAt"] == expires.isoformat().replace("+00:00", "Z")
    assert status["mailsSent"] == 1
    ready = condition(body, "Ready")
    assert ready is not None
    assert ready["status"] == "True"
    assert ready["reason"] == "Sent"
    assert status["observedGeneration"] == body["metadata"]["generation"]

    # The Secret holds the token and is owned by the Invitation (garbage-collected with it).
    secret = invitations.secret(status["secretName"])
    assert secret is not None
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Invitation",
        "ada",
        body["metadata"]["uid"],
    )
    token = invitations.secret_token(status["secretName"])
    assert len(token) >= 20
    assert token.isalnum()

    # MAS holds exactly one token: this value, the spec's limit and expiry.
    (stored,) = mas.tokens()
    assert stored["id"] == status["tokenId"]
    assert stored["token"] == token
    assert stored["usage_limit"] == 2
    assert _as_datetime(stored["expires_at"]) == expires

    # Exactly one mail, to the invitee, carrying the token (in the body, never the subject).
    (mail,) = smtp.wait_for_sync(1, timeout=5)
    assert mail.rcpt_tos == ("ada@example.org",)
    assert token in (mail.text or "")
    assert token in (mail.html or "")
    assert token not in mail.subject

    # Nothing of the token leaks into the Invitation or its Events.
    assert token not in str(invitations.get("ada"))
    assert token not in str(invitations.events("ada"))
    # One Event tells both the issue and the mail (issue 24); no TokenIssued of its own.
    events = invitations.wait_for_events("ada", "MailSent")
    (sent,) = [e for e in events if e["reason"] == "MailSent"]
    assert sent["message"] == (
        f"Registration token {status['tokenId']} issued in MAS; "
        "invitation mailed to ada@example.org"
    )
    assert "TokenIssued" not in {e["reason"] for e in events}


def test_restart_issues_no_second_token_and_no_second_mail(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator()
    invitations.apply("grace", email="grace@example.org")
    invitations.wait_for_phase("grace", "Sent")
    smtp.wait_for_sync(1, timeout=5)
    writes_before = _mas_writes(mas)

    first.kill()
    second = start_operator()
    # The restarted operator has handled the Invitation (Kopf: "Resuming is processed", or
    # "Creation"/"Update" if the kill beat Kopf's own bookkeeping), then run a full sync pass.
    wait_until(
        "Kopf's handling after the restart", lambda: bool(second.log_lines(" is processed")), 30
    )
    second.wait_for_sync_pass()
    assert second.returncode is None, second.log_tail()
    assert len(mas.tokens()) == 1
    assert len(smtp.messages) == 1
    assert _mas_writes(mas) == writes_before
    assert invitations.status("grace")["phase"] == "Sent"
    assert invitations.status("grace")["mailsSent"] == 1


def test_kubectl_get_shows_the_printer_columns(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    invitations.apply("lin", email="lin@example.org", validFor="48h")
    invitations.wait_for_phase("lin", "Sent")
    expires = invitations.status("lin")["expiresAt"]

    plain = invitations.kubectl("get", "invitations").splitlines()
    assert plain[0].split() == [
        "NAME",
        "EMAIL",
        "PHASE",
        "VALID",
        "USED",
        "EXPIRES",
        "ACCOUNT",  # who accepted: empty until then (docs/onboarding.md)
        "AGE",
    ]
    assert plain[1].split()[:6] == ["lin", "lin@example.org", "Sent", "true", "0", expires]

    wide = invitations.kubectl("get", "inv", "-o", "wide").splitlines()
    assert wide[0].split() == [
        "NAME",
        "EMAIL",
        "PHASE",
        "VALID",
        "USED",
        "LIMIT",
        "EXPIRES",
        "ACCOUNT",
        "READY",
        "MESSAGE",
        "AGE",
    ]
    # The account cell stays blank until the token is used.
    assert wide[1].split()[:8] == [
        "lin",
        "lin@example.org",
        "Sent",
        "true",
        "0",
        "1",
        expires,
        "True",
    ]
    assert "Invitation mailed to lin@example.org" in wide[1]

    # The category lets `kubectl get matrix` list Invitations next to other Matrix resources.
    assert "lin" in invitations.kubectl("get", "matrix")


def _mas_writes(mas: MasDouble) -> int:
    return sum(
        count
        for (method, path, _status), count in mas.request_counts().items()
        if method in {"POST", "PUT"} and "user-registration-tokens" in path
    )


def _as_datetime(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    assert isinstance(value, str)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
