"""The Synapse backend end to end: real control plane, real operator process, real Synapse.

A person registers with the token from the mail through Synapse's client-server API (the
three-step flow Element uses), and the Invitation follows: Accepted after one registration,
the token refused for a second one; revoking deletes the token in Synapse and un-revoking issues
it again; expiry and deletion behave as docs/synapse.md says. The lifecycle tests shared with MAS
run against Synapse too (`test_lifecycle.py`, `BOTH_BACKENDS`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import Body, InvitationsApi, condition, wait_until
from tests.operator_process import OperatorProcess
from tests.servers.synapse import SynapseServer

pytestmark = pytest.mark.integration


@pytest.fixture
def backend() -> str:
    return "synapse"


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> Iterator[OperatorProcess]:
    process = start_operator()
    yield process
    assert process.returncode is None, f"operator died:\n{process.log_tail()}"


def mailed_token(smtp: SmtpDouble, n: int = 1) -> str:
    """The registration token as the invitee reads it: the line of the mail that is the token."""
    text = smtp.wait_for_sync(n, timeout=10)[n - 1].text or ""
    found: list[str] = re.findall(r"^\s*([A-Za-z0-9]{24})\s*$", text, flags=re.MULTILINE)
    assert len(found) == 1, f"no single token line in the mail:\n{text}"
    return found[0]


def sent(invitations: InvitationsApi, name: str, **spec: object) -> Body:
    invitations.apply(name, **spec)
    return invitations.wait_for_phase(name, "Sent")


def eventually(check: Callable[[], bool], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()


@pytest.mark.usefixtures("operator")
def test_the_mailed_token_registers_one_matrix_user_and_the_invitation_is_accepted(
    invitations: InvitationsApi, synapse: SynapseServer, smtp: SmtpDouble
) -> None:
    body = sent(invitations, "ada", email="ada@example.org", displayName="Ada")
    token_id = body["status"]["tokenId"]
    token = mailed_token(smtp)
    assert re.fullmatch(r"syn-[0-9a-f]{24}", token_id)
    assert token not in token_id
    assert token == invitations.secret_token(body["status"]["secretName"])
    text = smtp.messages[0].text or ""
    assert "https://app.element.io/#/register" in text
    assert "It opens Element" in text
    assert "6-digit" not in text  # Element asking Synapse involves no emailed code
    stored = synapse.token(token)
    assert stored is not None
    assert (stored["uses_allowed"], stored["completed"]) == (1, 0)

    registration = synapse.register(token, username="ada")
    assert registration.ok, registration.body
    assert registration.user_id == f"@ada:{synapse.server_name}"

    accepted = invitations.wait_for_phase("ada", "Accepted", timeout=15)
    status = accepted["status"]
    assert (status["timesUsed"], status["valid"], status["usageLimit"]) == (1, False, 1)
    assert status["pendingUses"] == 0
    assert status["tokenId"] == token_id
    ready = condition(accepted, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "Accepted")
    invitations.wait_for_events("ada", "MailSent", "InvitationAccepted")

    second = synapse.register(token, username="mallory")
    assert (second.ok, second.stage, second.status_code, second.errcode) == (
        False,
        "token",
        401,
        "M_UNAUTHORIZED",
    )
    assert synapse.token_valid(token) is False
    assert len(smtp.messages) == 1


@pytest.mark.usefixtures("operator")
def test_an_abandoned_sign_up_shows_as_a_pending_use(
    invitations: InvitationsApi, synapse: SynapseServer, smtp: SmtpDouble
) -> None:
    sent(invitations, "half", email="half@example.org")
    token = mailed_token(smtp)
    started = synapse.register(token, finish=False)  # token stage passed, never finished
    assert started.stage == "token"

    pending = invitations.wait_for(
        "half", lambda b: b["status"].get("pendingUses") == 1, timeout=15, what="pendingUses 1"
    )
    status = pending["status"]
    # Not accepted (nobody registered), yet nobody else can use the single-use token now.
    assert (status["phase"], status["timesUsed"], status["valid"]) == ("Sent", 0, False)


def test_revoke_deletes_the_token_and_unrevoke_issues_it_again_even_after_a_restart(
    invitations: InvitationsApi,
    synapse: SynapseServer,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator()
    body = sent(invitations, "rev", email="rev@example.org", usageLimit=2, validFor="48h")
    token_id = body["status"]["tokenId"]
    token = mailed_token(smtp)
    expiry_time = (synapse.token(token) or {})["expiry_time"]

    invitations.patch_spec("rev", revoked=True)
    revoked = invitations.wait_for_phase("rev", "Revoked")
    assert (revoked["status"]["revoked"], revoked["status"]["valid"]) == (True, False)
    assert revoked["status"]["tokenId"] == token_id
    assert synapse.token(token) is None, "Synapse has no revocation: the token is deleted"
    refused = synapse.register(token)
    assert (refused.ok, refused.errcode) == (False, "M_UNAUTHORIZED")
    invitations.wait_for_events("rev", "TokenRevoked")

    # A restarted operator knows nothing of the deleted token; it must not issue it again: not
    # when Kopf hands it the Invitation, nor in a whole sync pass after that.
    operator.stop_after_cleanup()
    restarted = start_operator()
    wait_until(
        "Kopf's handling after the restart", lambda: bool(restarted.log_lines(" is processed")), 30
    )
    restarted.wait_for_sync_pass()
    assert synapse.token(token) is None
    assert invitations.status("rev")["phase"] == "Revoked"
    assert "DriftCorrected" not in invitations.event_reasons("rev")

    invitations.patch_spec("rev", revoked=False)
    again = invitations.wait_for_phase("rev", "Sent")
    assert again["status"]["tokenId"] == token_id  # the same value, so the same id
    assert (again["status"]["revoked"], again["status"]["valid"]) == (False, True)
    restored = synapse.token(token)
    assert restored is not None
    assert (restored["uses_allowed"], restored["expiry_time"]) == (2, expiry_time)
    invitations.wait_for_events("rev", "TokenUnrevoked")
    assert len(smtp.messages) == 1, "the invitee still has this token: no second mail"
    assert synapse.register(token).ok


@pytest.mark.usefixtures("operator")
def test_expiry_is_honoured_by_synapse_and_keeps_the_token(
    invitations: InvitationsApi, synapse: SynapseServer, smtp: SmtpDouble
) -> None:
    sent(invitations, "brief", email="brief@example.org", validFor="6s")
    token = mailed_token(smtp)
    expired = invitations.wait_for_phase("brief", "Expired", timeout=20)
    assert (expired["status"]["expired"], expired["status"]["valid"]) == (True, False)
    refused = synapse.register(token)
    assert (refused.ok, refused.stage, refused.errcode) == (False, "token", "M_UNAUTHORIZED")
    assert synapse.token(token) is not None, "expiry is not deletion"
    invitations.wait_for_events("brief", "InvitationExpired")


@pytest.mark.usefixtures("operator")
def test_deleting_the_invitation_deletes_the_token(
    invitations: InvitationsApi, synapse: SynapseServer, smtp: SmtpDouble
) -> None:
    sent(invitations, "bye", email="bye@example.org")
    token = mailed_token(smtp)
    invitations.kubectl("delete", "invitation", "bye", "--wait=false")
    invitations.wait_gone("bye", timeout=30)
    assert synapse.token(token) is None
    refused = synapse.register(token)
    assert (refused.ok, refused.errcode) == (False, "M_UNAUTHORIZED")


@pytest.mark.usefixtures("operator")
def test_a_token_deleted_by_hand_is_issued_again_from_the_secret(
    invitations: InvitationsApi, synapse: SynapseServer, smtp: SmtpDouble
) -> None:
    body = sent(invitations, "restore", email="restore@example.org", usageLimit=2)
    token = mailed_token(smtp)
    synapse.delete_token(token)  # an admin (or a restored database) loses it

    assert eventually(lambda: synapse.token(token) is not None, timeout=20)
    restored = synapse.token(token)
    assert restored is not None
    assert restored["uses_allowed"] == 2
    invitations.wait_for_events("restore", "DriftCorrected")
    assert invitations.status("restore")["tokenId"] == body["status"]["tokenId"]
    assert len(smtp.messages) == 1, "the invitee already has this token: no second mail"
    assert synapse.register(token).ok


def test_a_spent_token_deleted_by_hand_is_not_handed_out_again(
    invitations: InvitationsApi, synapse: SynapseServer, smtp: SmtpDouble, operator: OperatorProcess
) -> None:
    sent(invitations, "done", email="done@example.org")
    token = mailed_token(smtp)
    assert synapse.register(token).ok
    invitations.wait_for_phase("done", "Accepted", timeout=15)
    synapse.delete_token(token)  # admins clean up spent tokens

    operator.wait_for_sync_pass()  # the pass that would see a token missing has run
    assert synapse.token(token) is None
    status = invitations.status("done")
    assert (status["phase"], status["timesUsed"]) == ("Accepted", 1)
    assert "DriftCorrected" not in invitations.event_reasons("done")


def test_a_wrong_admin_token_stalls_the_invitation_with_a_clear_reason(
    invitations: InvitationsApi,
    synapse: SynapseServer,
    secrets_dir: Path,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    wrong = secrets_dir / "wrong-admin-token"
    wrong.write_text("syt_not_an_admin_token")
    start_operator(MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE=str(wrong))
    invitations.apply("nope", email="nope@example.org")
    failed = invitations.wait_for_phase("nope", "Failed", timeout=30)
    stalled = condition(failed, "Stalled")
    assert stalled is not None
    assert (stalled["status"], stalled["reason"]) == ("True", "SynapseAuthFailed")
    assert "MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE" in stalled["message"]
    assert synapse.tokens() == []
