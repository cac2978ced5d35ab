"""authentik's invitation API: the double against the spec, the client and the enrollment step
against the double, over real sockets.

Every answer of the double is validated against `invitations-openapi.json` (the fixture fails a
test whose answers broke it); the tests here drive every path the operator and `doctor` use, the
behaviour the spec leaves out (FACTS.md: names not unique, 403 never 401, single-use invitations
deleted when opened) and the crash windows of the enrollment step.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from matrix_invite_operator import enrollment, ownership
from matrix_invite_operator.authentik import AuthentikClient, BearerTokenAuth
from matrix_invite_operator.errors import (
    AuthentikForbidden,
    AuthentikMisdirected,
    AuthentikTlsError,
    AuthentikUnavailable,
)
from matrix_invite_operator.models import (
    AuthentikInvitationStatus,
    EnrollmentState,
    InvitationSpec,
    InvitationStatus,
)
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.runtime import authentik_http_client, build_authentik
from matrix_invite_operator.settings import Settings
from pydantic import SecretStr

from tests.doubles.authentik import (
    ADD,
    INVITATION,
    INVITATIONS,
    OPERATOR_PERMISSIONS,
    VIEW,
    AuthentikDouble,
    InvitationsSpec,
)
from tests.doubles.smtp import make_certificates

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
EXPIRY = NOW + dt.timedelta(days=7)


@pytest.fixture
def authentik() -> Iterator[AuthentikDouble]:
    with AuthentikDouble() as double:
        yield double
    assert double.spec_violations == [], "the authentik double answered outside the spec"
    assert double.request_violations == [], "a client sent a body outside InvitationRequest"


@pytest.fixture
async def client(authentik: AuthentikDouble) -> AsyncIterator[AuthentikClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
        yield AuthentikClient(
            http,
            authentik.url,
            auth=BearerTokenAuth(SecretStr(authentik.api_token)),
            flow_slug="matrix-invitation",
        )


def invitation(email: str = "ada@example.org", **status: object) -> Invitation:
    return Invitation(
        namespace="team",
        name="ada.lovelace",
        uid="3f2b8c1e-0000-4000-8000-000000000001",
        generation=1,
        created=NOW,
        spec=InvitationSpec(email=email, display_name="Ada Lovelace"),
        status=InvitationStatus.model_validate(status),
    )


# --- the double and the spec -------------------------------------------------------------------


def test_the_double_answers_every_path_within_the_spec(authentik: AuthentikDouble) -> None:
    headers = {"Authorization": f"Bearer {authentik.api_token}"}
    with httpx.Client(base_url=authentik.url + "/api/v3", headers=headers, timeout=5) as api:
        flow = api.get("/flows/instances/matrix-invitation/").json()
        created = api.post(
            INVITATIONS,
            json={"name": "n-1", "single_use": True, "flow": flow["pk"], "fixed_data": {}},
        )
        assert created.status_code == 201
        again = {"name": "n-1", "flow": flow["pk"]}
        assert api.post(INVITATIONS, json=again).status_code == 201  # not unique
        listed = api.get(INVITATIONS, params={"name": "n-1"}).json()
        assert listed["pagination"]["count"] == 2
        assert listed["pagination"]["next"] == 0
        assert listed["autocomplete"] == {}
        pk = created.json()["pk"]
        assert api.get(f"{INVITATIONS}{pk}/").status_code == 200
        assert api.delete(f"{INVITATIONS}{pk}/").status_code == 204
        assert api.delete(f"{INVITATIONS}{pk}/").json() == {
            "detail": "No Invitation matches the given query."
        }
        assert api.get(f"{INVITATIONS}not-a-uuid/").json() == {"detail": "Not found."}
        assert api.post(INVITATIONS, json={"name": "a b"}).status_code == 400
        assert api.post(INVITATIONS, json={"flow": "matrix-invitation", "name": "x"}).json() == {
            "flow": ["“matrix-invitation” is not a valid UUID."]
        }
        assert api.get("/stages/invitation/stages/").status_code == 200
        assert api.get("/flows/instances/nope/").status_code == 404
    refused = httpx.get(authentik.url + "/api/v3" + INVITATIONS, timeout=5)
    assert refused.status_code == 403  # never 401
    assert refused.json() == {"detail": "Authentication credentials were not provided."}
    authentik.request_violations.clear()  # the two bad bodies above were sent on purpose


def test_a_missing_expiry_gets_one_day_as_authentik_does(authentik: AuthentikDouble) -> None:
    headers = {"Authorization": f"Bearer {authentik.api_token}"}
    # Always with a flow: without one authentik answers `flow_obj: null`, which its own spec
    # forbids (FACTS section 7.1); the operator always sends the flow.
    body = {"name": "n", "flow": authentik.flows["matrix-invitation"].pk}
    answer = httpx.post(
        authentik.url + "/api/v3" + INVITATIONS, json=body, headers=headers, timeout=5
    ).json()
    expires = dt.datetime.fromisoformat(answer["expires"].replace("Z", "+00:00"))
    assert dt.timedelta(hours=23) < expires - dt.datetime.now(UTC) <= dt.timedelta(days=1)
    assert answer["single_use"] is False  # the API's default: the client always sends true


def test_the_validation_can_fail() -> None:
    """The check behind `spec_violations` reports a wrong answer: a missing required field, an
    undeclared one, a null where the spec has none."""
    spec = InvitationsSpec()
    pagination = {
        "next": 0,
        "previous": 0,
        "count": 0,
        "current": 1,
        "total_pages": 1,
        "start_index": 0,
        "end_index": 0,
    }
    good = {"pagination": pagination, "results": [], "autocomplete": {}}
    assert spec.response_errors("GET", INVITATIONS, 200, good) == []
    assert spec.response_errors("GET", INVITATIONS, 200, {**good, "extra": 1}) != []
    assert spec.response_errors("GET", INVITATIONS, 200, {"results": []}) != []
    assert spec.response_errors("DELETE", INVITATION, 204, None) == []
    assert spec.response_errors("GET", INVITATION, 401, {"detail": "x"}) != []
    assert spec.schema_errors("Pagination", {**pagination, "next": None}, "x") != []


# --- the client ------------------------------------------------------------------------------


async def test_create_binds_the_invitee_and_the_flow(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    invite = await client.create(
        "n-1", email="ada@example.org", display_name="Ada Lovelace", expires=EXPIRY
    )
    (stored,) = authentik.invitations()
    assert stored.single_use is True
    assert stored.fixed_data == {"email": "ada@example.org", "name": "Ada Lovelace"}
    assert stored.flow == authentik.flows["matrix-invitation"].pk  # the UUID, not the slug
    assert stored.expires == EXPIRY
    assert invite.key.get_secret_value() == stored.pk
    assert invite.id.startswith("ak-")
    assert stored.pk not in invite.id
    assert client.link(invite).get_secret_value() == (
        f"{authentik.url}/if/flow/matrix-invitation/?itoken={stored.pk}"
    )
    assert [i.id for i in await client.named("n-1")] == [invite.id]
    assert await client.named("n-2") == []


async def test_delete_counts_a_missing_invitation_as_deleted(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    invite = await client.create("n", email="a@example.org", display_name=None, expires=EXPIRY)
    await client.delete(invite)
    assert authentik.invitations() == []
    await client.delete(invite)  # 404: gone already (opened, say)


async def test_names_with_a_prefix_take_one_listing(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    for name in ("matrix-invite_a_x_1", "matrix-invite_b_y_2", "other", "MATRIX-INVITE_c"):
        await client.create(name, email="a@example.org", display_name=None, expires=EXPIRY)
    # authentik's search is a case-insensitive substring over several fields: filtered again.
    assert await client.names("matrix-invite_") == {"matrix-invite_a_x_1", "matrix-invite_b_y_2"}
    assert authentik.requests.count(("GET", INVITATIONS)) == 1


async def test_listing_follows_pages(authentik: AuthentikDouble, client: AuthentikClient) -> None:
    for _ in range(105):  # beyond authentik's page size cap of 100
        await client.create("many", email="a@example.org", display_name=None, expires=EXPIRY)
    assert len(await client.named("many")) == 105


async def test_a_refused_token_names_the_fix(tmp_path: Path, authentik: AuthentikDouble) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-the-token")
    settings = Settings(
        authentik_url=authentik.url,
        authentik_api_token_file=token_file,
        authentik_flow_slug="matrix-invitation",
    )
    async with httpx.AsyncClient(timeout=5) as http:
        client = AuthentikClient(
            http,
            authentik.url,
            auth=BearerTokenAuth(settings.authentik_api_token_value),
            flow_slug="matrix-invitation",
        )
        with pytest.raises(AuthentikForbidden, match=r"Token invalid/expired.*API_TOKEN_FILE"):
            await client.named("n")
        token_file.write_text(authentik.api_token + "\n")  # rotated: read at the next request
        assert await client.named("n") == []


async def test_a_missing_permission_names_it(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    authentik.permissions(set(OPERATOR_PERMISSIONS) - {ADD})
    with pytest.raises(AuthentikForbidden, match=r"authentik_stages_invitation\.add_invitation"):
        await client.create("n", email="a@example.org", display_name=None, expires=EXPIRY)
    authentik.permissions({VIEW, ADD})
    invite = await client.create("n", email="a@example.org", display_name=None, expires=EXPIRY)
    with pytest.raises(AuthentikForbidden, match="delete_invitation") as refused:
        await client.delete(invite)
    assert invite.key.get_secret_value() not in str(refused.value)


async def test_an_unknown_flow_slug_is_misdirected(authentik: AuthentikDouble) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        client = AuthentikClient(
            http,
            authentik.url,
            auth=BearerTokenAuth(SecretStr(authentik.api_token)),
            flow_slug="no-such-flow",
        )
        with pytest.raises(AuthentikMisdirected, match="no flow with the slug 'no-such-flow'"):
            await client.create("n", email="a@example.org", display_name=None, expires=EXPIRY)


async def test_outages_are_transient(authentik: AuthentikDouble, client: AuthentikClient) -> None:
    authentik.down = True
    with pytest.raises(AuthentikUnavailable, match="503"):
        await client.named("n")
    authentik.down = False
    authentik.drop_next("POST", INVITATIONS)
    with pytest.raises(AuthentikUnavailable) as lost:
        await client.create("n", email="a@example.org", display_name=None, expires=EXPIRY)
    assert lost.value.may_have_taken_effect
    assert len(authentik.named("n")) == 1  # the create ran; only its answer was lost


async def test_a_private_ca_is_trusted_only_when_configured(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "tls", ca_name="authentik double test CA")
    with AuthentikDouble(tls=certificates.server_context()) as double:
        token = tmp_path / "token"
        token.write_text(double.api_token)
        for ca_bundle in (None, certificates.ca_path):
            settings = Settings(
                authentik_url=double.url,
                authentik_api_token_file=token,
                authentik_flow_slug="matrix-invitation",
                authentik_ca_bundle=ca_bundle,
            )
            async with authentik_http_client(settings) as http:
                client = build_authentik(settings, http)
                if ca_bundle is None:
                    with pytest.raises(
                        AuthentikTlsError, match="MATRIX_INVITE_AUTHENTIK_CA_BUNDLE"
                    ):
                        await client.named("n")
                else:
                    assert await client.named("n") == []
    assert double.spec_violations == []


async def test_nothing_answering_is_unavailable_not_taken_effect() -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        client = AuthentikClient(
            http,
            "http://127.0.0.1:9",  # discard port: nothing listens
            auth=BearerTokenAuth(SecretStr("t")),
            flow_slug="f",
        )
        with pytest.raises(AuthentikUnavailable) as refused:
            await client.named("n")
    assert not refused.value.may_have_taken_effect


# --- the enrollment step against the double ---------------------------------------------------


async def created_and_mailed(
    client: AuthentikClient,
) -> tuple[enrollment.Enrollment, AuthentikInvitationStatus]:
    """Ada's invitation made, and its status as it reads once her mail went out."""
    first = await enrollment.ensure(
        client, invitation(), None, expiry=EXPIRY, resend=False, now=NOW
    )
    assert first.status is not None
    return first, enrollment.mailed(first.status)


async def test_ensure_creates_once_and_keeps_it(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    first = await enrollment.ensure(
        client, invitation(), None, expiry=EXPIRY, resend=False, now=NOW
    )
    assert first.status is not None
    assert first.link is not None
    assert first.unmailed
    assert first.status.name == "matrix-invite_team_ada_lovelace_3f2b8c1e"
    assert [n.reason for n in first.notices] == ["AuthentikInvitationCreated"]
    # A crash before the status write: the next run knows nothing, finds it by its name.
    again = await enrollment.ensure(
        client, invitation(), None, expiry=EXPIRY, resend=False, now=NOW
    )
    assert again.status is not None
    assert again.status.id == first.status.id
    assert again.notices == []
    assert len(authentik.invitations()) == 1
    for notice in first.notices:
        assert authentik.invitations()[0].pk not in notice.message


async def test_a_lost_create_answer_is_looked_up_not_repeated(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    authentik.drop_next("POST", INVITATIONS)
    done = await enrollment.ensure(client, invitation(), None, expiry=EXPIRY, resend=False, now=NOW)
    assert done.link is not None
    assert len(authentik.invitations()) == 1
    assert authentik.requests.count(("POST", INVITATIONS)) == 1


async def test_a_duplicate_is_deleted_and_the_mailed_one_kept(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    _, mailed = await created_and_mailed(client)
    # A create whose answer was lost and that landed after the lookup: a second of the name.
    await client.create(mailed.name, email="ada@example.org", display_name=None, expires=EXPIRY)
    kept = await enrollment.ensure(
        client, invitation(), mailed, expiry=EXPIRY, resend=False, now=NOW
    )
    assert kept.status is not None
    assert kept.status.id == mailed.id
    assert not kept.unmailed
    assert len(authentik.invitations()) == 1
    assert [n.reason for n in kept.notices] == ["AuthentikInvitationDeleted"]


async def test_an_opened_link_is_reported_and_not_made_again(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    _, mailed = await created_and_mailed(client)
    assert authentik.open(authentik.invitations()[0].pk)
    after = await enrollment.ensure(
        client, invitation(), mailed, expiry=EXPIRY, resend=False, now=NOW
    )
    assert after.status is not None
    assert after.status.state is EnrollmentState.OPENED
    assert not after.status.exists
    assert after.link is None
    assert "does not mean the account was created" in (after.status.message or "")
    assert authentik.invitations() == []
    # A resend asks for a working link: a new invitation, unmailed.
    resent = await enrollment.ensure(
        client, invitation(), after.status, expiry=EXPIRY, resend=True, now=NOW
    )
    assert resent.unmailed
    assert len(authentik.invitations()) == 1


async def test_a_new_address_replaces_the_invitation(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    _, mailed = await created_and_mailed(client)
    moved = invitation("grace@example.org")
    after = await enrollment.ensure(client, moved, mailed, expiry=EXPIRY, resend=False, now=NOW)
    assert after.status is not None
    assert after.unmailed
    assert after.status.email == "grace@example.org"
    (stored,) = authentik.invitations()
    assert stored.fixed_data["email"] == "grace@example.org"
    assert "previous address" in after.notices[0].message


async def test_withdraw_deletes_every_one_and_unrevoke_makes_a_new_one(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    _, mailed = await created_and_mailed(client)
    await client.create(mailed.name, email="ada@example.org", display_name=None, expires=EXPIRY)
    gone = await enrollment.withdraw(client, invitation(), mailed, why="revoked", now=NOW)
    assert gone.status is not None
    assert gone.status.state is EnrollmentState.DELETED
    assert authentik.invitations() == []
    assert len(gone.notices) == 2
    again = await enrollment.withdraw(client, invitation(), gone.status, why="revoked", now=NOW)
    assert again.status == gone.status
    assert again.notices == []
    back = await enrollment.ensure(
        client, invitation(), gone.status, expiry=EXPIRY, resend=False, now=NOW
    )
    assert back.unmailed
    assert len(authentik.invitations()) == 1


async def test_remove_all_leaves_nothing_of_the_name(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    name = enrollment.invitation_name(invitation())
    for _ in range(3):
        await client.create(name, email="ada@example.org", display_name=None, expires=EXPIRY)
    await client.create("other", email="ada@example.org", display_name=None, expires=EXPIRY)
    notices = await enrollment.remove_all(client, invitation())
    assert len(notices) == 3
    assert [i.name for i in authentik.invitations()] == ["other"]


def test_names_are_slugs_and_tell_invitations_apart() -> None:
    import re

    a = enrollment.invitation_name(invitation())
    assert re.fullmatch(r"[-a-zA-Z0-9_]+", a)
    other = Invitation(
        namespace="team",
        name="ada.lovelace",
        uid=str(uuid.uuid4()),
        generation=1,
        created=NOW,
        spec=InvitationSpec(email="ada@example.org"),
        status=InvitationStatus(),
    )
    assert enrollment.invitation_name(other) != a  # re-created under the same name


async def test_a_link_opened_before_the_token_stopped_working_stays_opened(
    authentik: AuthentikDouble, client: AuthentikClient
) -> None:
    first, mailed = await created_and_mailed(client)
    assert authentik.open(authentik.invitations()[0].pk)
    spent = await enrollment.withdraw(
        client, invitation(), mailed, why="the token is spent", now=NOW
    )
    assert spent.status is not None
    assert spent.status.state is EnrollmentState.OPENED  # not "deleted by the operator"
    assert spent.notices == []
    assert ownership.looks_opened(mailed, alive=set())
    assert not ownership.looks_opened(mailed, alive={mailed.name})
    assert not ownership.looks_opened(first.status, alive=set())  # not mailed yet: no claim
