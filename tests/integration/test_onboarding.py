"""After sign-up, end to end: the Invitation shows who accepted, and the account is in its rooms.

Real control plane, real operator process, real Synapse. The invitee registers with the token
from the mail; the rooms (a public room by alias, a private room, a space) are made by another
user, so the operator's acting user is in them only where the test lets it in. Memberships are
read from Synapse's own room state. With MAS, the double's personal sessions hand out real
Synapse tokens of the onboarding user (logged out in Synapse when MAS revokes them), so the
joins happen on the real homeserver too; the leak scan after each test covers those tokens.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import Body, InvitationsApi, condition
from tests.integration.test_synapse import mailed_token
from tests.operator_process import OperatorProcess
from tests.servers.synapse import SynapseServer

pytestmark = pytest.mark.integration


@dataclass
class Rooms:
    owner_token: str
    alias: str
    public: str
    private: str
    space: str
    closed: str  # the acting user is not in it (yet)


def make_rooms(synapse: SynapseServer, actor_id: str, actor_token: str) -> Rooms:
    _, owner = synapse.create_user(f"owner{secrets.token_hex(3)}")
    alias = f"lobby{secrets.token_hex(3)}"
    rooms = Rooms(
        owner,
        f"#{alias}:{synapse.server_name}",
        synapse.create_room(owner, public=True, alias=alias),
        synapse.create_room(owner),
        synapse.create_room(owner, space=True),
        synapse.create_room(owner),
    )
    for room in (rooms.private, rooms.space):
        synapse.invite_and_join(owner, room, actor_id, actor_token)
    return rooms


def outcomes(body: Body) -> dict[str, str]:
    return {r["room"]: r["state"] for r in (body.get("status") or {}).get("rooms") or []}


def settled_rooms(body: Body, rooms: list[str]) -> bool:
    return set(outcomes(body)) == set(rooms)


def ready_and_not_stalled(body: Body) -> None:
    """Whatever the rooms did, an accepted invitation stays healthy for Flux and kstatus."""
    ready, stalled = condition(body, "Ready"), condition(body, "Stalled")
    assert ready is not None
    assert stalled is not None
    assert (ready["status"], ready["reason"]) == ("True", "Accepted")
    assert stalled["status"] == "False"


def signed_up(
    invitations: InvitationsApi,
    synapse: SynapseServer,
    smtp: SmtpDouble,
    name: str,
    rooms: list[str],
    *,
    bound_address: str,
) -> str:
    """Invite `name`, register with the mailed token; returns the Matrix ID.

    Synapse's client API registers without an address here; a sign-up with email verification
    binds one (`bound_address`): that is what the threepid lookup finds.
    """
    invitations.apply(name, email=f"{name}@example.org", rooms=rooms)
    invitations.wait_for_phase(name, "Sent")
    registration = synapse.register(mailed_token(smtp), username=name)
    assert registration.ok, registration.body
    user_id = registration.user_id
    assert user_id == f"@{name}:{synapse.server_name}"
    synapse.bind_email(user_id, bound_address)
    return user_id


def whoami_status(synapse: SynapseServer, token: str) -> int:
    return httpx.get(
        f"{synapse.url}/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).status_code


class TestSynapseBackend:
    @pytest.fixture
    def backend(self) -> str:
        return "synapse"

    def test_the_account_is_shown_and_joined_to_each_room_and_space(
        self,
        invitations: InvitationsApi,
        synapse: SynapseServer,
        smtp: SmtpDouble,
        start_operator: Callable[..., OperatorProcess],
    ) -> None:
        operator = start_operator()
        admin_id = f"@admin:{synapse.server_name}"
        rooms = make_rooms(synapse, admin_id, synapse.admin_token)
        name = f"ada{secrets.token_hex(3)}"
        wanted = [rooms.alias, rooms.private, rooms.space, rooms.closed]
        user_id = signed_up(
            invitations, synapse, smtp, name, wanted, bound_address=f"{name}@example.org"
        )

        body = invitations.wait_for(
            name,
            lambda b: settled_rooms(b, wanted),
            timeout=30,
            what="an outcome for every room",
        )
        status = body["status"]
        assert status["account"] == user_id
        assert outcomes(body) == {
            rooms.alias: "Joined",
            rooms.private: "Joined",
            rooms.space: "Joined",
            rooms.closed: "Failed",
        }
        assert synapse.membership(rooms.public, user_id) == "join"
        assert synapse.membership(rooms.private, user_id) == "join"
        assert synapse.membership(rooms.space, user_id) == "join"
        assert synapse.membership(rooms.closed, user_id) is None
        (closed,) = [r for r in status["rooms"] if r["room"] == rooms.closed]
        assert "must be in the room, with power to invite" in closed["message"]
        assert "403" not in closed["message"] or "not in room" in closed["message"].lower()
        failing = condition(body, "RoomsJoined")
        assert failing is not None
        assert (failing["status"], failing["reason"]) == ("False", "RoomJoinFailed")
        assert rooms.closed in failing["message"]
        known = condition(body, "AccountKnown")
        assert known is not None
        assert (known["status"], known["reason"]) == ("True", "Found")
        ready_and_not_stalled(body)
        # Found in the pass that saw the use: in InvitationAccepted; found by a later search
        # (the address was bound a moment after the registration): in AccountFound.
        told = [
            e["message"]
            for e in invitations.events(name)
            if e["reason"] in ("InvitationAccepted", "AccountFound")
        ]
        assert any(user_id in message for message in told), told
        assert user_id in invitations.kubectl("get", "inv", name)  # the printer column

        # The room's owner lets the acting user in: the next retry joins the account.
        synapse.invite_and_join(rooms.owner_token, rooms.closed, admin_id, synapse.admin_token)
        healed = invitations.wait_for(
            name,
            lambda b: outcomes(b).get(rooms.closed) == "Joined",
            timeout=40,
            what="the closed room joined after the actor was let in",
        )
        assert synapse.membership(rooms.closed, user_id) == "join"
        joined = condition(healed, "RoomsJoined")
        assert joined is not None
        assert (joined["status"], joined["reason"]) == ("True", "AllRoomsJoined")

        # A room added later is joined; a room removed stays as it is (nobody is kicked).
        later = synapse.create_room(rooms.owner_token)
        synapse.invite_and_join(rooms.owner_token, later, admin_id, synapse.admin_token)
        invitations.patch_spec(name, rooms=[rooms.alias, later])
        after = invitations.wait_for(
            name,
            lambda b: outcomes(b) == {rooms.alias: "Joined", later: "Joined"},
            timeout=30,
            what="the room added later joined, removed rooms forgotten",
        )
        assert synapse.membership(later, user_id) == "join"
        assert synapse.membership(rooms.private, user_id) == "join", "removing kicks nobody"
        ready_and_not_stalled(after)
        assert operator.returncode is None, operator.log_tail()

    def test_another_address_leaves_no_account_until_an_admin_names_it(
        self,
        invitations: InvitationsApi,
        synapse: SynapseServer,
        smtp: SmtpDouble,
        start_operator: Callable[..., OperatorProcess],
    ) -> None:
        start_operator()
        admin_id = f"@admin:{synapse.server_name}"
        rooms = make_rooms(synapse, admin_id, synapse.admin_token)
        name = f"bea{secrets.token_hex(3)}"
        user_id = signed_up(
            invitations,
            synapse,
            smtp,
            name,
            [rooms.private],
            bound_address=f"{name}@elsewhere.example",
        )

        body = invitations.wait_for(
            name,
            lambda b: (condition(b, "AccountKnown") or {}).get("reason") == "AccountNotFound",
            timeout=40,
            what="AccountKnown=False, AccountNotFound",
        )
        assert "account" not in body["status"]
        known = condition(body, "AccountKnown")
        assert known is not None
        assert known["status"] == "False"
        assert f"{name}@example.org" in known["message"]
        assert "spec.account" in known["message"]
        waiting = condition(body, "RoomsJoined")
        assert waiting is not None
        assert (waiting["status"], waiting["reason"]) == ("False", "WaitingForAccount")
        ready_and_not_stalled(body)
        assert body["status"]["accountSearch"]["attempts"] == 3, "a few searches, then it stops"
        invitations.wait_for_events(name, "AccountNotFound")

        invitations.patch_spec(name, account=user_id)
        done = invitations.wait_for(
            name,
            lambda b: outcomes(b) == {rooms.private: "Joined"},
            timeout=30,
            what="the room joined once spec.account names the account",
        )
        assert done["status"]["account"] == user_id
        named = condition(done, "AccountKnown")
        assert named is not None
        assert (named["status"], named["reason"]) == ("True", "SetInSpec")
        assert synapse.membership(rooms.private, user_id) == "join"


class TestMasBackend:
    def test_personal_sessions_join_the_account_on_the_real_synapse_and_are_revoked(
        self,
        invitations: InvitationsApi,
        mas: MasDouble,
        synapse: SynapseServer,
        smtp: SmtpDouble,
        start_operator: Callable[..., OperatorProcess],
    ) -> None:
        bot = f"invitebot{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        # Not a Synapse admin by itself in MAS's world; here its Synapse tokens are admin tokens
        # standing in for what urn:synapse:admin:* grants (FACTS, "Observed ... onboarding").
        bot_id, bot_token = synapse.create_user(bot, admin=True, password=password)
        mas.accounts.add_user(bot)
        mas.accounts.mint = lambda username, scope: synapse.login(username, password)
        mas.accounts.on_revoke = synapse.logout
        rooms = make_rooms(synapse, bot_id, bot_token)
        # Inviting (unlike the admin join) needs the inviter in the room, public ones too.
        synapse.invite_and_join(rooms.owner_token, rooms.public, bot_id, bot_token)
        synapse.logout(bot_token)
        start_operator(
            MATRIX_INVITE_HOMESERVER_URL=synapse.url,
            MATRIX_INVITE_ONBOARDING_USER=bot,
            MATRIX_INVITE_SERVER_NAME=synapse.server_name,
        )
        name = f"cyd{secrets.token_hex(3)}"
        email = f"{name}@example.org"
        wanted = [rooms.alias, rooms.private, rooms.space]
        invitations.apply("cyd", email=email, rooms=wanted, roomMembership="invite")
        body = invitations.wait_for_phase("cyd", "Sent")
        token = mailed_token(smtp)
        (stored,) = [t for t in mas.tokens() if t["token"] == token]
        assert stored["id"] == body["status"]["tokenId"]

        # MAS creates the account and provisions it in Synapse as the invitee signs up.
        user_id, _ = synapse.create_user(name)
        mas.accounts.sign_up(stored["id"], name, email)
        done = invitations.wait_for(
            "cyd",
            lambda b: settled_rooms(b, wanted),
            timeout=30,
            what="an outcome for every room",
        )
        assert done["status"]["account"] == user_id
        assert outcomes(done) == dict.fromkeys(wanted, "Invited")
        for room in (rooms.public, rooms.private, rooms.space):
            assert synapse.membership(room, user_id) == "invite"
        ready_and_not_stalled(done)

        minted = mas.accounts.sessions()
        assert minted, "the joins went through a personal session"
        assert mas.accounts.sessions_active == 0, "every session minted was revoked"
        for session in minted:
            assert session["scope"].startswith("urn:matrix:client:api:* urn:synapse:admin:* ")
            assert session["expires_at"] is not None
            assert whoami_status(synapse, session["access_token"]) == 401
        lookups = mas.request_count(path="/api/admin/v1/user-emails")
        assert 1 <= lookups <= 3, f"{lookups} account searches for one sign-up"
