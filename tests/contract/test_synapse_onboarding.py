"""Who accepted, and joining rooms, against a real Synapse (no operator, no cluster).

`SynapseTokenBackend.find_account` asks Synapse's threepid lookup; `HomeserverClient` joins and
invites with the admin token; `Onboarding` turns their answers into per-room outcomes (joined,
invited, failed with Synapse's own message) and retries "User not found". Every membership is
checked through Synapse's own room state, not through what our code reports.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from matrix_invite_operator.backends.synapse import SynapseAdminClient, SynapseTokenBackend
from matrix_invite_operator.homeserver import HomeserverClient, MatrixError
from matrix_invite_operator.models import InvitationSpec, InvitationStatus, RoomState
from matrix_invite_operator.onboarding import AdminTokenSessions, Onboarding
from matrix_invite_operator.settings import Settings
from pydantic import SecretStr

from tests.onboarding_invitation import applied, invitation
from tests.servers.synapse import SynapseServer

LONG_AGO = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def fresh(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def backend(synapse: SynapseServer, http: httpx.AsyncClient) -> SynapseTokenBackend:
    return SynapseTokenBackend(
        SynapseAdminClient(http, synapse.url, SecretStr(synapse.admin_token))
    )


@pytest.fixture
def homeserver(synapse: SynapseServer, http: httpx.AsyncClient) -> HomeserverClient:
    return HomeserverClient(http, synapse.url)


async def test_the_account_with_the_invited_address_is_found(
    synapse: SynapseServer, backend: SynapseTokenBackend
) -> None:
    name = fresh("ada")
    registration = synapse.register(_token(synapse), username=name)
    assert registration.ok
    assert registration.user_id is not None
    synapse.bind_email(registration.user_id, f"{name}@example.org")
    found = await backend.find_account(
        f"{name.upper()}@Example.org", used_at=None, not_before=LONG_AGO
    )
    assert found.user_id == registration.user_id

    nobody = await backend.find_account("nobody@example.org", used_at=None, not_before=LONG_AGO)
    assert nobody.user_id is None
    assert "nobody@example.org" in nobody.reason

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    older = await backend.find_account(f"{name}@example.org", used_at=None, not_before=later)
    assert older.user_id is None, "an account older than the Invitation is someone else's"
    assert registration.user_id in older.reason


def _token(synapse: SynapseServer) -> str:
    answer = synapse.admin.post("/_synapse/admin/v1/registration_tokens/new", json={})
    answer.raise_for_status()
    token: str = answer.json()["token"]
    return token


async def test_admin_join_and_invite_on_real_rooms(
    synapse: SynapseServer, homeserver: HomeserverClient
) -> None:
    admin = SecretStr(synapse.admin_token)
    owner_id, owner = synapse.create_user(fresh("owner"))
    admin_id = f"@admin:{synapse.server_name}"
    alias = fresh("public")
    public = synapse.create_room(owner, public=True, alias=alias)
    private = synapse.create_room(owner)
    space = synapse.create_room(owner, space=True)
    stranger = synapse.create_room(owner)  # the admin never joins this one
    for room in (private, space):
        synapse.invite_and_join(owner, room, admin_id, synapse.admin_token)
    ada, _ = synapse.create_user(fresh("ada"))

    alias_ref = f"#{alias}:{synapse.server_name}"
    assert await homeserver.admin_join(alias_ref, ada, admin) == public
    assert await homeserver.admin_join(private, ada, admin) == private
    invited_to = await homeserver.invite(space, ada, admin)
    assert invited_to == space
    assert synapse.membership(public, ada) == "join"
    assert synapse.membership(private, ada) == "join"
    assert synapse.membership(space, ada) == "invite"

    with pytest.raises(MatrixError) as refused:
        await homeserver.admin_join(stranger, ada, admin)
    assert refused.value.status == 403
    assert synapse.membership(stranger, ada) is None
    with pytest.raises(MatrixError) as again:
        await homeserver.admin_join(private, ada, admin)
    assert "already in the room" in again.value.error
    with pytest.raises(MatrixError) as unknown:
        await homeserver.admin_join(private, f"@ghost:{synapse.server_name}", admin)
    assert (unknown.value.status, unknown.value.error) == (404, "User not found")
    assert owner_id != ada


async def test_onboarding_records_each_room_and_heals_when_the_actor_is_let_in(
    synapse: SynapseServer, backend: SynapseTokenBackend, homeserver: HomeserverClient
) -> None:
    admin_id = f"@admin:{synapse.server_name}"
    _, owner = synapse.create_user(fresh("owner"))
    private = synapse.create_room(owner)
    closed = synapse.create_room(owner)
    synapse.invite_and_join(owner, private, admin_id, synapse.admin_token)
    ada, _ = synapse.create_user(fresh("ada"))
    settings = Settings(retry_base_seconds=1, retry_max_seconds=2)
    observed: list[tuple[str, str]] = []
    onboarding = Onboarding(
        settings,
        backend,
        homeserver=homeserver,
        sessions=AdminTokenSessions(SecretStr(synapse.admin_token)),
        observe=lambda *event: observed.append(event),
    )
    spec = InvitationSpec(email="ada@example.org", rooms=[private, closed], account=ada)
    now = dt.datetime.now(dt.UTC)
    assert onboarding.due(invitation(spec), now)
    status, notices = await applied(onboarding, spec, InvitationStatus(), now)

    assert status.account == ada
    outcomes = {r.room: r for r in status.rooms or []}
    assert outcomes[private].state is RoomState.JOINED
    assert outcomes[closed].state is RoomState.FAILED
    assert "must be in the room, with power to invite" in (outcomes[closed].message or "")
    rooms = status.condition("RoomsJoined")
    assert rooms is not None
    assert (rooms.status, rooms.reason) == ("False", "RoomJoinFailed")
    account = status.condition("AccountKnown")
    assert account is not None
    assert (account.status, account.reason) == ("True", "SetInSpec")
    assert [n.reason for n in notices] == ["RoomJoinFailed"]
    assert synapse.membership(private, ada) == "join"

    # Not due again before the backoff runs out: a sync pass costs nothing meanwhile. Status
    # keeps whole seconds, so the attempt counts from the start of its second: at most 1 s
    # (the backoff here) after that is still inside it, whatever `now`'s fraction was.
    attempted = now.replace(microsecond=0)
    assert not onboarding.due(invitation(spec, status), attempted + dt.timedelta(seconds=0.999))
    synapse.invite_and_join(owner, closed, admin_id, synapse.admin_token)
    later = now + dt.timedelta(seconds=1.5)
    assert onboarding.due(invitation(spec, status), later)
    healed, notices = await applied(onboarding, spec, status, later)
    assert {r.room: r.state for r in healed.rooms or []} == {
        private: RoomState.JOINED,
        closed: RoomState.JOINED,
    }
    done = healed.condition("RoomsJoined")
    assert done is not None
    assert (done.status, done.reason) == ("True", "AllRoomsJoined")
    assert notices == []
    assert synapse.membership(closed, ada) == "join"
    assert not onboarding.due(invitation(spec, healed), later + dt.timedelta(hours=1))
    assert observed.count(("join", "joined")) == 2
    assert observed.count(("join", "failed")) == 1


async def test_user_not_found_is_retried_and_the_notice_is_posted_once(
    synapse: SynapseServer, backend: SynapseTokenBackend, homeserver: HomeserverClient
) -> None:
    """Synapse learns of a MAS account a moment after MAS lists it: the join retries."""
    admin_id = f"@admin:{synapse.server_name}"
    _, owner = synapse.create_user(fresh("owner"))
    room = synapse.create_room(owner)
    notices_room = synapse.create_room(owner)
    for joined in (room, notices_room):
        synapse.invite_and_join(owner, joined, admin_id, synapse.admin_token)
    name = fresh("late")
    account = f"@{name}:{synapse.server_name}"
    waits: list[float] = []

    async def account_appears_meanwhile(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # two "User not found" answers, then Synapse has the account
            synapse.create_user(name)

    onboarding = Onboarding(
        Settings(notice_room=notices_room),
        backend,
        homeserver=homeserver,
        sessions=AdminTokenSessions(SecretStr(synapse.admin_token)),
        sleep=account_appears_meanwhile,
    )
    spec = InvitationSpec(email=f"{name}@example.org", rooms=[room], account=account)
    now = dt.datetime.now(dt.UTC)
    status, notices = await applied(onboarding, spec, InvitationStatus(), now, name="late")
    assert {r.room: r.state for r in status.rooms or []} == {room: RoomState.JOINED}
    assert waits == [0.05, 0.1]
    assert synapse.membership(room, account) == "join"
    assert status.notice_posted is True
    assert notices == []
    assert not onboarding.due(invitation(spec, status), now)
    texts = synapse.messages(notices_room)
    assert texts == [f"{name}@example.org accepted invitation `late` as {account}; joined {room}"]
