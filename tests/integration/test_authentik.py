"""The invitee's authentik invitation through the Invitation's life, on the real API server.

The operator runs with authentik settings against the authentik double (every answer validated
against `invitations-openapi.json`); each test reads what authentik holds, what status says and
what the invitee got by mail. The secret-hygiene scan after each test (conftest) looks for the
API token and every invitation's key (the link's `itoken`) in the logs, Events and Invitations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.doubles.authentik import ADD, OPERATOR_PERMISSIONS, AuthentikDouble, StoredInvitation
from tests.doubles.smtp import ReceivedMessage, SmtpDouble
from tests.integration.harness import Body, InvitationsApi, condition
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

FLOW = "matrix-invitation"
LINK = re.compile(r"https?://127\.0\.0\.1:\d+/if/flow/matrix-invitation/\?itoken=([0-9a-f-]{36})")


@pytest.fixture
def authentik() -> Iterator[AuthentikDouble]:
    with AuthentikDouble(flow_slug=FLOW) as double:
        yield double
    assert double.spec_violations == [], "the authentik double answered outside the spec"
    assert double.request_violations == [], "the operator sent authentik a body outside the spec"


@pytest.fixture
def authentik_env(authentik: AuthentikDouble, secrets_dir: Path) -> dict[str, str]:
    token_file = secrets_dir / "authentik-api-token"
    token_file.write_text(authentik.api_token)
    return {
        "MATRIX_INVITE_AUTHENTIK_URL": authentik.url,
        "MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE": str(token_file),
        "MATRIX_INVITE_AUTHENTIK_FLOW_SLUG": FLOW,
    }


@pytest.fixture
def operator(
    start_operator: Callable[..., OperatorProcess], authentik_env: dict[str, str]
) -> Iterator[OperatorProcess]:
    process = start_operator(**authentik_env)
    yield process
    assert process.returncode is None, f"operator died:\n{process.log_tail()}"


def links(message: ReceivedMessage) -> list[str]:
    """The enrollment links' keys in a mail, text part."""
    return LINK.findall(message.text or "")


def only(authentik: AuthentikDouble) -> StoredInvitation:
    stored = authentik.invitations()
    assert len(stored) == 1, f"expected one authentik invitation, found {stored}"
    return stored[0]


def enrollment_status(body: Body) -> dict[str, object]:
    found = body["status"].get("authentikInvitation")
    assert isinstance(found, dict), body["status"]
    return found


@pytest.mark.usefixtures("operator")
def test_each_invitation_gets_one_bound_invitation_whose_link_is_the_mails_first_step(
    invitations: InvitationsApi, authentik: AuthentikDouble, smtp: SmtpDouble
) -> None:
    invitations.apply("ada", email="ada@example.org", displayName="Ada Lovelace")
    body = invitations.wait_for_phase("ada", "Sent")
    stored = only(authentik)
    assert stored.single_use is True
    assert stored.fixed_data == {"email": "ada@example.org", "name": "Ada Lovelace"}
    assert stored.flow == authentik.flows[FLOW].pk
    assert stored.expires.isoformat().replace("+00:00", "Z") == body["status"]["expiresAt"]
    ours = enrollment_status(body)
    assert ours["name"] == stored.name
    assert (ours["state"], ours["exists"]) == ("Active", True)
    assert ours["mailedId"] == ours["id"]
    (mail,) = smtp.wait_for_sync(1)
    assert links(mail) == [stored.pk]
    text = mail.text or ""
    token = invitations.secret_token(body["status"]["secretName"])
    assert text.index(stored.pk) < text.index(token), "the account step comes first"
    assert stored.pk in (mail.html or "")
    invitations.wait_for_events("ada", "AuthentikInvitationCreated", "MailSent")


def test_a_crash_between_authentiks_answer_and_the_status_write_makes_no_second_invitation(
    start_operator: Callable[..., OperatorProcess],
    authentik_env: dict[str, str],
    invitations: InvitationsApi,
    authentik: AuthentikDouble,
    smtp: SmtpDouble,
) -> None:
    first = start_operator(**authentik_env)
    authentik.after_create = first.kill  # authentik acted; the operator dies before the answer
    invitations.apply("crash", email="crash@example.org")
    invitations.wait_for(
        "crash", lambda _: first.returncode is not None, timeout=30, what="the operator killed"
    )
    assert len(authentik.invitations()) == 1
    assert smtp.messages == []
    start_operator(**authentik_env)
    body = invitations.wait_for_phase("crash", "Sent")
    stored = only(authentik)  # found by its name, not created again
    assert authentik.requests.count(("POST", "/stages/invitation/invitations/")) == 1
    (mail,) = smtp.wait_for_sync(1)
    assert links(mail) == [stored.pk]
    assert enrollment_status(body)["state"] == "Active"


@pytest.mark.usefixtures("operator")
def test_an_opened_link_shows_as_opened_not_as_an_account(
    invitations: InvitationsApi, authentik: AuthentikDouble, smtp: SmtpDouble
) -> None:
    invitations.apply("open", email="open@example.org")
    invitations.wait_for_phase("open", "Sent")
    (mail,) = smtp.wait_for_sync(1)
    (key,) = links(mail)
    assert authentik.open(key)  # the invitee opens the link: authentik deletes it there
    body = invitations.wait_for(
        "open",
        lambda b: enrollment_status(b).get("state") == "Opened",
        timeout=15,
        what="Opened (the sync pass's listing lacks it)",
    )
    ours = enrollment_status(body)
    assert ours["exists"] is False
    assert "does not mean the account was created" in str(ours["message"])
    assert body["status"]["phase"] == "Sent"  # the token is still unused: not Accepted
    assert authentik.invitations() == []  # not made again
    assert len(smtp.messages) == 1


@pytest.mark.usefixtures("operator")
def test_a_new_address_deletes_the_old_invitation_and_mails_a_new_one(
    invitations: InvitationsApi, authentik: AuthentikDouble, smtp: SmtpDouble
) -> None:
    invitations.apply("move", email="old@example.org")
    invitations.wait_for_phase("move", "Sent")
    old = only(authentik)
    invitations.patch_spec("move", email="new@example.org")
    mails = smtp.wait_for_sync(2, timeout=20)
    new = only(authentik)
    assert new.pk != old.pk
    assert new.fixed_data["email"] == "new@example.org"
    assert links(mails[1]) == [new.pk]
    assert "new@example.org" in str(mails[1].message["To"])
    body = invitations.wait_for(
        "move",
        lambda b: enrollment_status(b).get("email") == "new@example.org",
        what="bound to the new address",
    )
    assert enrollment_status(body)["mailedId"] == enrollment_status(body)["id"]
    invitations.wait_for_events("move", "AuthentikInvitationDeleted")


@pytest.mark.usefixtures("operator")
def test_revoke_deletes_it_and_unrevoke_mails_a_new_one(
    invitations: InvitationsApi, authentik: AuthentikDouble, smtp: SmtpDouble
) -> None:
    invitations.apply("rev", email="rev@example.org")
    invitations.wait_for_phase("rev", "Sent")
    first = only(authentik)
    invitations.patch_spec("rev", revoked=True)
    revoked = invitations.wait_for_phase("rev", "Revoked")
    assert authentik.invitations() == []
    ours = enrollment_status(revoked)
    assert (ours["state"], ours["exists"]) == ("Deleted", False)
    invitations.patch_spec("rev", revoked=False)
    invitations.wait_for_phase("rev", "Sent")
    second = only(authentik)
    assert second.pk != first.pk
    mails = smtp.wait_for_sync(2, timeout=20)
    assert links(mails[1]) == [second.pk], "the old link is dead: the invitee gets the new one"


def test_expiry_deletes_it(
    start_operator: Callable[..., OperatorProcess],
    authentik_env: dict[str, str],
    invitations: InvitationsApi,
    authentik: AuthentikDouble,
) -> None:
    start_operator(**authentik_env)
    invitations.apply("brief", email="brief@example.org", validFor="6s")
    invitations.wait_for_phase("brief", "Sent")
    assert len(authentik.invitations()) == 1
    invitations.wait_for_phase("brief", "Expired", timeout=20)
    body = invitations.wait_for(
        "brief",
        lambda b: enrollment_status(b).get("state") == "Deleted",
        timeout=20,
        what="its authentik invitation deleted",
    )
    assert authentik.invitations() == []  # by the operator: the double runs no cleanup task
    assert "expired" in str(enrollment_status(body)["message"])


@pytest.mark.usefixtures("operator")
def test_deleting_the_invitation_deletes_it(
    invitations: InvitationsApi, authentik: AuthentikDouble
) -> None:
    invitations.apply("gone", email="gone@example.org")
    invitations.wait_for_phase("gone", "Sent")
    assert len(authentik.invitations()) == 1
    invitations.kubectl("delete", "invitation", "gone", "--wait=false")
    invitations.wait_gone("gone")
    assert authentik.invitations() == []


@pytest.mark.usefixtures("operator")
def test_authentik_down_waits_with_its_reason_then_heals(
    invitations: InvitationsApi, authentik: AuthentikDouble, smtp: SmtpDouble
) -> None:
    authentik.down = True
    invitations.apply("wait", email="wait@example.org")
    pending = invitations.wait_for(
        "wait",
        lambda b: (condition(b, "Ready") or {}).get("reason") == "AuthentikUnavailable",
        what="Pending, AuthentikUnavailable",
    )
    assert pending["status"]["phase"] == "Pending"
    reconciling = condition(pending, "Reconciling")
    assert reconciling is not None
    assert reconciling["status"] == "True"
    assert smtp.messages == [], "no mail without its enrollment link"
    authentik.down = False
    invitations.wait_for_phase("wait", "Sent", timeout=30)
    (mail,) = smtp.wait_for_sync(1)
    assert links(mail) == [only(authentik).pk]


@pytest.mark.usefixtures("operator")
def test_a_token_without_the_permission_stalls_naming_the_fix_then_heals(
    invitations: InvitationsApi, authentik: AuthentikDouble, smtp: SmtpDouble
) -> None:
    authentik.permissions(set(OPERATOR_PERMISSIONS) - {ADD})
    invitations.apply("perm", email="perm@example.org")
    stalled = invitations.wait_for_phase("perm", "Failed")
    problem = condition(stalled, "Stalled")
    assert problem is not None
    assert (problem["status"], problem["reason"]) == ("True", "AuthentikForbidden")
    assert "authentik_stages_invitation.add_invitation" in problem["message"]
    assert smtp.messages == []
    authentik.permissions(set(OPERATOR_PERMISSIONS))  # the admin grants it: heals by itself
    invitations.wait_for_phase("perm", "Sent", timeout=30)
    assert len(authentik.invitations()) == 1
