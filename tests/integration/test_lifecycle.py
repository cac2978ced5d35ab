"""The Invitation lifecycle on the real API server: usage, expiry, edits, deletion and drift.

Tests marked `BOTH_BACKENDS` run once with MAS (the double) and once with Synapse (a real
homeserver, real registrations), asking the token store through `tests.integration.token_stores`;
the others describe what only MAS does (its ids, its revocation outside Git).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.conftest import MAS_CLIENT_ID, MAS_CLIENT_SECRET
from tests.integration.harness import Body, InvitationsApi, condition
from tests.integration.outside_admin import OutsideAdmin
from tests.integration.token_stores import MasStore, StoredToken, SynapseStore, TokenStore
from tests.operator_process import OperatorProcess
from tests.servers.synapse import SynapseServer

pytestmark = pytest.mark.integration

BOTH_BACKENDS = pytest.mark.parametrize("backend", ["mas", "synapse"])


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> Iterator[OperatorProcess]:
    process = start_operator()
    yield process
    assert process.returncode is None, f"operator died:\n{process.log_tail()}"


@pytest.fixture
def admin(mas: MasDouble) -> OutsideAdmin:
    return OutsideAdmin(mas.url, MAS_CLIENT_ID, MAS_CLIENT_SECRET)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> TokenStore:
    if backend == "synapse":
        synapse: SynapseServer = request.getfixturevalue("synapse")
        return SynapseStore(synapse)
    return MasStore(request.getfixturevalue("mas"), request.getfixturevalue("admin"))


def token_of(invitations: InvitationsApi, body: Body) -> tuple[str, str]:
    """(tokenId, token value) of an Invitation, the value read from its Secret."""
    status = body["status"]
    return status["tokenId"], invitations.secret_token(status["secretName"])


def held(store: TokenStore, token_id: str, token: str) -> StoredToken:
    found = store.stored(token_id, token)
    assert found is not None, f"{store.name} lost token {token_id}"
    return found


def sent(invitations: InvitationsApi, name: str, **spec: object) -> Body:
    invitations.apply(name, **spec)
    return invitations.wait_for_phase(name, "Sent")


def mas_token(mas: MasDouble, token_id: str) -> dict[str, object]:
    stored = mas.token(token_id)
    assert stored is not None, f"MAS lost token {token_id}"
    return stored


def as_time(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    assert isinstance(value, str)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@BOTH_BACKENDS
@pytest.mark.usefixtures("operator")
def test_single_use_invitation_is_accepted(invitations: InvitationsApi, store: TokenStore) -> None:
    body = sent(invitations, "ada", email="ada@example.org")
    store.use(*token_of(invitations, body))
    accepted = invitations.wait_for_phase("ada", "Accepted", timeout=15)
    status = accepted["status"]
    assert (status["timesUsed"], status["valid"], status["usageLimit"]) == (1, False, 1)
    if store.reports_last_use:
        assert status["lastUsedAt"]
    ready = condition(accepted, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "Accepted")
    invitations.wait_for_events("ada", "InvitationAccepted")


@BOTH_BACKENDS
@pytest.mark.usefixtures("operator")
def test_partly_used_invitation_stays_sent(invitations: InvitationsApi, store: TokenStore) -> None:
    body = sent(invitations, "team", email="team@example.org", usageLimit=3)
    store.use(*token_of(invitations, body))
    used = invitations.wait_for(
        "team", lambda b: b["status"].get("timesUsed") == 1, timeout=15, what="timesUsed 1"
    )
    assert (used["status"]["phase"], used["status"]["valid"]) == ("Sent", True)
    assert used["status"]["lastSyncedAt"]


@BOTH_BACKENDS
def test_short_validity_expires_promptly(
    invitations: InvitationsApi, store: TokenStore, start_operator: Callable[..., OperatorProcess]
) -> None:
    # A sync interval far beyond the validity: only the expiry wake-up can flip it in time.
    start_operator(MATRIX_INVITE_SYNC_INTERVAL_SECONDS="300")
    body = sent(invitations, "brief", email="brief@example.org", validFor="8s")
    expires = as_time(body["status"]["expiresAt"])
    expired = invitations.wait_for_phase("brief", "Expired", timeout=20)
    assert expired["status"]["expired"] is True
    assert expired["status"]["valid"] is False
    ready = condition(expired, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "Expired")
    # Flipped by the expiry wake-up, within moments of expiresAt (the Event carries the time).
    events = invitations.wait_for_events("brief", "InvitationExpired")
    (event,) = [e for e in events if e["reason"] == "InvitationExpired"]
    flipped = as_time(event["firstTimestamp"])
    assert dt.timedelta(0) <= flipped - expires < dt.timedelta(seconds=3)
    assert not store.revoked(*token_of(invitations, body))  # expiry is not revocation


@BOTH_BACKENDS
@pytest.mark.usefixtures("operator")
def test_revoke_and_unrevoke_through_the_spec(
    invitations: InvitationsApi, store: TokenStore
) -> None:
    body = sent(invitations, "rev", email="rev@example.org")
    token_id, token = token_of(invitations, body)
    invitations.patch_spec("rev", revoked=True)
    revoked = invitations.wait_for_phase("rev", "Revoked")
    assert (revoked["status"]["revoked"], revoked["status"]["valid"]) == (True, False)
    assert store.revoked(token_id, token)

    invitations.patch_spec("rev", revoked=False)
    again = invitations.wait_for_phase("rev", "Sent")
    assert again["status"]["tokenId"] == token_id
    assert (again["status"]["revoked"], again["status"]["valid"]) == (False, True)
    assert not store.revoked(token_id, token)
    invitations.wait_for_events("rev", "TokenRevoked", "TokenUnrevoked")
    assert store.count() == 1


@BOTH_BACKENDS
@pytest.mark.usefixtures("operator")
def test_raise_limit_and_extend_expiry(invitations: InvitationsApi, store: TokenStore) -> None:
    body = sent(invitations, "edit", email="edit@example.org", validFor="24h")
    token_id, token = token_of(invitations, body)
    created = as_time(body["metadata"]["creationTimestamp"])

    invitations.patch_spec("edit", usageLimit=3, validFor="72h")
    edited = invitations.wait_for(
        "edit",
        lambda b: (
            b["status"].get("usageLimit") == 3
            and b["status"].get("observedGeneration") == b["metadata"]["generation"]
        ),
        what="usageLimit 3",
    )
    stored = held(store, token_id, token)
    assert stored.usage_limit == 3
    assert stored.expires_at == created + dt.timedelta(hours=72)
    assert edited["status"]["expiresAt"] == stored_time(created + dt.timedelta(hours=72))
    assert edited["status"]["tokenId"] == token_id  # edited in place, not reissued
    invitations.wait_for_events("edit", "TokenUpdated")


def stored_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@BOTH_BACKENDS
@pytest.mark.usefixtures("operator")
def test_new_address_gets_a_new_token_and_the_old_one_stops_working(
    invitations: InvitationsApi, store: TokenStore, smtp: SmtpDouble
) -> None:
    body = sent(invitations, "moved", email="old@example.org")
    old_id = body["status"]["tokenId"]
    old_token = invitations.secret_token(body["status"]["secretName"])

    invitations.patch_spec("moved", email="new@example.org")
    moved = invitations.wait_for(
        "moved",
        lambda b: (
            b["status"].get("mailRecipient") == "new@example.org"
            and b["status"].get("phase") == "Sent"
        ),
        what="mailed to the new address",
    )
    new_id = moved["status"]["tokenId"]
    new_token = invitations.secret_token(moved["status"]["secretName"])
    assert new_id != old_id
    assert new_token != old_token
    old = store.stored(old_id, old_token)
    assert old is None or old.valid is False
    assert store.revoked(old_id, old_token)
    assert held(store, new_id, new_token).token == new_token
    assert held(store, new_id, new_token).valid is True
    mails = smtp.wait_for_sync(2, timeout=5)
    assert [m.rcpt_tos for m in mails] == [("old@example.org",), ("new@example.org",)]
    assert new_token in (mails[1].text or "")
    assert old_token not in (mails[1].text or "")


@BOTH_BACKENDS
@pytest.mark.usefixtures("operator")
def test_deletion_revokes_the_token_and_removes_the_secret(
    invitations: InvitationsApi, store: TokenStore
) -> None:
    body = sent(invitations, "bye", email="bye@example.org")
    token_id, token = token_of(invitations, body)
    secret_name = body["status"]["secretName"]
    assert "matrix-invite.dev/revoke-token" in body["metadata"]["finalizers"]

    invitations.kubectl("delete", "invitation", "bye", "--wait=false")
    invitations.wait_gone("bye", timeout=30)
    assert store.revoked(token_id, token)
    # kube-controller-manager's garbage collector removes the owned Secret.
    deadline_ok = _eventually(lambda: invitations.secret(secret_name) is None, timeout=30)
    assert deadline_ok, "the Secret outlived its Invitation"


@pytest.mark.usefixtures("operator")
def test_token_lost_in_mas_is_recreated_from_the_secret(
    invitations: InvitationsApi, mas: MasDouble, smtp: SmtpDouble
) -> None:
    body = sent(invitations, "restore", email="restore@example.org", usageLimit=2)
    token = invitations.secret_token(body["status"]["secretName"])
    mas.delete_all()  # a MAS database restored from before the invitation

    recovered = invitations.wait_for(
        "restore",
        lambda b: (
            b["status"].get("tokenId") not in (None, body["status"]["tokenId"])
            and b["status"].get("phase") == "Sent"
        ),
        timeout=20,
        what="a recreated token",
    )
    (stored,) = mas.tokens()
    assert stored["id"] == recovered["status"]["tokenId"]
    assert stored["token"] == token  # the mailed token works again
    assert stored["usage_limit"] == 2
    invitations.wait_for_events("restore", "DriftCorrected")
    assert len(smtp.messages) == 1, "the invitee already has this token: no second mail"


@BOTH_BACKENDS
@pytest.mark.usefixtures("operator")
def test_limits_changed_outside_git_are_set_back(
    invitations: InvitationsApi, store: TokenStore
) -> None:
    body = sent(invitations, "drift", email="drift@example.org", validFor="24h")
    token_id, token = token_of(invitations, body)
    store.set_limits(token_id, token, usage_limit=50, expires_at=None)

    def restored() -> bool:
        stored = held(store, token_id, token)
        return stored.usage_limit == 1 and stored.expires_at is not None

    assert _eventually(restored, timeout=20), held(store, token_id, token)
    invitations.wait_for_events("drift", "DriftCorrected")
    assert invitations.status("drift")["phase"] == "Sent"


def test_revoked_outside_git_stays_revoked_until_the_spec_cycles(
    invitations: InvitationsApi, mas: MasDouble, admin: OutsideAdmin, operator: OperatorProcess
) -> None:
    body = sent(invitations, "outside", email="outside@example.org")
    token_id = body["status"]["tokenId"]
    admin.revoke(token_id)

    revoked = invitations.wait_for_phase("outside", "Revoked", timeout=15)
    assert "outside Git" in revoked["status"]["message"]
    invitations.wait_for_events("outside", "RevokedOutsideGit")
    # Several sync passes later it is still revoked: the operator does not undo an admin's act.
    for _ in range(2):
        operator.wait_for_sync_pass()
        assert mas_token(mas, token_id)["revoked_at"] is not None

    invitations.patch_spec("outside", revoked=True)
    invitations.wait_for_phase("outside", "Revoked")
    invitations.patch_spec("outside", revoked=False)
    invitations.wait_for_phase("outside", "Sent")
    assert mas_token(mas, token_id)["revoked_at"] is None


def _eventually(check: Callable[[], bool], *, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()
