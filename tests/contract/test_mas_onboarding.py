"""Who accepted, and acting as the onboarding user: the MAS client against the MAS double.

The double's users, user-emails and personal-sessions endpoints answer under the spec (the
`mas_double` fixture fails a test whose answers break it); these tests drive each path through
real sockets, then the operator's side: `MasAccounts.find_account` (the heuristic of FACTS,
"Who used a token") and `PersonalSessions` (minted per use, revoked after, even on failure).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from matrix_invite_operator.backends.mas import (
    SESSION_NAME,
    MasAccounts,
    MasAdminClient,
    PersonalSessions,
)
from matrix_invite_operator.backends.oauth import ClientCredentialsAuth
from matrix_invite_operator.errors import BackendRejected
from pydantic import SecretStr

from tests.doubles.mas import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, MasDouble
from tests.doubles.mas_accounts import SESSIONS_PATH, USER_EMAILS_PATH, USERS_PATH

SERVER = "example.org"
LONG_AGO = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def client(mas_double: MasDouble) -> AsyncIterator[MasAdminClient]:
    auth = ClientCredentialsAuth(
        DEFAULT_CLIENT_ID, SecretStr(DEFAULT_CLIENT_SECRET), issuer=mas_double.url
    )
    async with httpx.AsyncClient(timeout=5) as http:
        yield MasAdminClient(http, mas_double.url, auth=auth)


@pytest.fixture
def accounts(client: MasAdminClient) -> MasAccounts:
    return MasAccounts(client, server_name=lambda: SERVER)


@pytest.fixture
def api(mas_double: MasDouble) -> Iterator[httpx.Client]:
    grant = httpx.post(
        mas_double.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
        auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        timeout=5,
    )
    headers = {"Authorization": f"Bearer {grant.json()['access_token']}"}
    with httpx.Client(base_url=mas_double.url, headers=headers, timeout=5) as http:
        yield http


# --- the double's endpoints, every status path -------------------------------------------------


def test_user_emails_filter_ignores_case_and_pages(
    mas_double: MasDouble, api: httpx.Client
) -> None:
    ada = mas_double.accounts.add_user("ada", email="Ada@Example.org")
    mas_double.accounts.add_user("bob", email="bob@example.org")
    found = api.get(USER_EMAILS_PATH, params={"filter[email]": "ada@example.ORG"})
    assert found.status_code == 200
    (record,) = found.json()["data"]
    assert record["type"] == "user-email"
    assert record["attributes"]["user_id"] == ada["id"]
    assert found.json()["meta"] == {"count": 1}

    everyone = api.get(USER_EMAILS_PATH, params={"page[first]": "1", "count": "false"})
    assert "meta" not in everyone.json()
    assert len(everyone.json()["data"]) == 1
    assert "next" in everyone.json()["links"]
    only = api.get(USER_EMAILS_PATH, params={"count": "only"})
    assert "data" not in only.json()
    assert only.json()["meta"] == {"count": 2}
    assert api.get(USER_EMAILS_PATH, params={"page[first]": "0"}).status_code == 400
    nobody = api.get(USER_EMAILS_PATH, params={"filter[user]": "01J44RKQYM4G3TNVANTMTDYTX6"})
    assert nobody.status_code == 404


def test_users_by_id_and_by_name(mas_double: MasDouble, api: httpx.Client) -> None:
    ada = mas_double.accounts.add_user("ada")
    by_id = api.get(f"{USERS_PATH}/{ada['id']}")
    assert by_id.status_code == 200
    assert by_id.json()["data"]["attributes"]["username"] == "ada"
    by_name = api.get(f"{USERS_PATH}/by-username/ada")
    assert by_name.json()["data"]["id"] == ada["id"]
    assert api.get(f"{USERS_PATH}/by-username/nobody").status_code == 404
    assert api.get(f"{USERS_PATH}/01J44RKQYM4G3TNVANTMTDYTX6").status_code == 404
    assert api.get(f"{USERS_PATH}/not-a-ulid").status_code == 400


def test_personal_sessions_show_the_token_once_and_revoke_once(
    mas_double: MasDouble, api: httpx.Client
) -> None:
    bot = mas_double.accounts.add_user("invitebot")
    body = {"actor_user_id": bot["id"], "human_name": "t", "scope": "urn:matrix:client:api:*"}
    created = api.post(SESSIONS_PATH, json={**body, "expires_in": 60})
    assert created.status_code == 201
    session = created.json()["data"]
    assert session["attributes"]["access_token"].startswith("mpt_")
    assert session["attributes"]["expires_at"] is not None
    read = api.get(f"{SESSIONS_PATH}/{session['id']}").json()["data"]
    assert "access_token" not in read["attributes"]
    revoke = f"{SESSIONS_PATH}/{session['id']}/revoke"
    assert api.post(revoke).status_code == 200
    again = api.post(revoke)
    assert again.status_code == 409
    assert "already revoked" in again.json()["errors"][0]["title"]
    assert api.post(f"{SESSIONS_PATH}/01J44RKQYM4G3TNVANTMTDYTX6/revoke").status_code == 404

    unknown = api.post(SESSIONS_PATH, json={**body, "actor_user_id": "01J44RKQYM4G3TNVANTMTDYTX6"})
    assert (unknown.status_code, unknown.json()["errors"][0]["title"]) == (404, "User not found")
    bad_scope = api.post(SESSIONS_PATH, json={**body, "scope": 'a "b'})
    assert (bad_scope.status_code, bad_scope.json()["errors"][0]["title"]) == (400, "Invalid scope")
    assert mas_double.accounts.sessions_minted == 1
    assert mas_double.accounts.sessions_active == 0


def test_the_spec_check_catches_a_wrong_user_email_answer(
    mas_double: MasDouble, api: httpx.Client
) -> None:
    """The validation these tests lean on can fail: a record without user_id is reported."""
    mas_double.accounts.add_user("ada", email="ada@example.org")

    def drop_user_id(body: dict[str, object]) -> dict[str, object]:
        data = body["data"]
        assert isinstance(data, list)
        del data[0]["attributes"]["user_id"]
        return body

    mas_double.mangle_next_response(drop_user_id)
    api.get(USER_EMAILS_PATH, params={"filter[email]": "ada@example.org"})
    assert any("user_id" in v for v in mas_double.spec_violations)
    mas_double.spec_violations.clear()  # seen; the fixture checks the rest


# --- find_account: who used the token ----------------------------------------------------------


async def test_the_account_created_when_the_token_was_used_is_found(
    mas_double: MasDouble, accounts: MasAccounts
) -> None:
    token = mas_double.add_token(usage_limit=1)
    mas_double.accounts.sign_up(token["id"], "ada", "ada@example.org")
    used_at = mas_double.token(token["id"])["last_used_at"]  # type: ignore[index]
    found = await accounts.find_account("ADA@example.org", used_at=used_at, not_before=LONG_AGO)
    assert found.user_id == f"@ada:{SERVER}"
    # Two requests: the address, then its owner.
    assert mas_double.request_count(path="/api/admin/v1/user-emails") == 1
    assert mas_double.request_count(path="/api/admin/v1/users/{id}") == 1


async def test_no_account_for_an_address_nobody_signed_up_with(
    mas_double: MasDouble, accounts: MasAccounts
) -> None:
    token = mas_double.add_token(usage_limit=1)
    mas_double.accounts.sign_up(token["id"], "ada", "other@example.net")
    found = await accounts.find_account(
        "ada@example.org", used_at=mas_double.now(), not_before=LONG_AGO
    )
    assert found.user_id is None
    assert "ada@example.org" in found.reason


async def test_an_older_account_holding_the_address_is_not_the_one(
    mas_double: MasDouble, accounts: MasAccounts
) -> None:
    mas_double.accounts.add_user("old", email="ada@example.org", created_at=LONG_AGO)
    found = await accounts.find_account(
        "ada@example.org", used_at=mas_double.now(), not_before=LONG_AGO
    )
    assert found.user_id is None
    assert "@old:example.org" in found.reason


async def test_the_use_may_come_just_before_or_after_the_account(
    mas_double: MasDouble, accounts: MasAccounts
) -> None:
    now = mas_double.now()
    mas_double.accounts.add_user("ada", email="ada@example.org", created_at=now)
    for skew in (-5, 5):
        used_at = now + dt.timedelta(seconds=skew)
        found = await accounts.find_account("ada@example.org", used_at=used_at, not_before=LONG_AGO)
        assert found.user_id == "@ada:example.org"


# --- personal sessions -----------------------------------------------------------------------


async def test_a_personal_session_is_device_scoped_short_and_revoked_after_use(
    mas_double: MasDouble, client: MasAdminClient
) -> None:
    mas_double.accounts.add_user("invitebot")
    seen: list[tuple[str, str]] = []
    sessions = PersonalSessions(
        client,
        "invitebot",
        server_name=lambda: SERVER,
        lifetime_seconds=120,
        observe=lambda *event: seen.append(event),
    )
    async with sessions.session() as token:
        (minted,) = mas_double.accounts.sessions()
        assert token.get_secret_value() == minted["access_token"]
        assert minted["revoked_at"] is None
    (revoked,) = mas_double.accounts.sessions()
    assert revoked["revoked_at"] is not None
    scopes = revoked["scope"].split()
    assert scopes[:2] == ["urn:matrix:client:api:*", "urn:synapse:admin:*"]
    assert scopes[2].startswith("urn:matrix:client:device:MIO")
    assert revoked["human_name"] == SESSION_NAME
    assert revoked["expires_at"] - revoked["created_at"] == dt.timedelta(seconds=120)
    assert seen == [("personal_session", "minted"), ("personal_session", "revoked")]
    assert "@invitebot:example.org" in sessions.actor

    with pytest.raises(RuntimeError):
        async with sessions.session():
            raise RuntimeError("a join blew up")
    assert mas_double.accounts.sessions_minted == 2
    assert mas_double.accounts.sessions_active == 0, "revoked even when the work failed"
    # Each session names its own device: revoking one cannot end another.
    devices = {s["scope"].split()[2] for s in mas_double.accounts.sessions()}
    assert len(devices) == 2


async def test_an_unknown_onboarding_user_says_so(
    mas_double: MasDouble, client: MasAdminClient
) -> None:
    sessions = PersonalSessions(client, "nobody", server_name=lambda: SERVER, lifetime_seconds=60)
    with pytest.raises(BackendRejected, match="no user named 'nobody'"):
        async with sessions.session():
            pass
    assert mas_double.accounts.sessions_minted == 0
