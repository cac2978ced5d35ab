"""The MAS double against MAS's contract: every endpoint and status path, over real sockets.

Each answer on an Admin API path is validated by the double itself (see the `mas_double`
fixture); these tests drive every path so that validation covers them, check the behaviour the
spec leaves out (FACTS.md), and prove the validation can fail.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.doubles.mas import (
    CROCKFORD,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DISCOVERY_PATH,
    OAUTH_TOKEN_PATH,
    PROVIDERS_PATH,
    REVOKE_PATH,
    SITE_CONFIG_PATH,
    TOKEN_PATH,
    TOKENS_PATH,
    AdminApiSpec,
    MasDouble,
    UlidGenerator,
    default_spec_path,
    format_rfc3339,
    normalize_ulid,
    parse_rfc3339,
)

REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC


def grant(
    double: MasDouble,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    secret: str = DEFAULT_CLIENT_SECRET,
    method: str = "basic",
    scope: str = "urn:mas:admin",
    grant_type: str = "client_credentials",
) -> httpx.Response:
    form = {"grant_type": grant_type, "scope": scope}
    auth: tuple[str, str] | None = (client_id, secret)
    if method == "post":
        form |= {"client_id": client_id, "client_secret": secret}
        auth = None
    return httpx.post(double.url + OAUTH_TOKEN_PATH, data=form, auth=auth, timeout=5)


def access_token(double: MasDouble) -> str:
    answer = grant(double)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture
def api(mas_double: MasDouble) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {access_token(mas_double)}"}
    with httpx.Client(base_url=mas_double.url, headers=headers, timeout=5) as client:
        yield client


def create(api: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = api.post(TOKENS_PATH, json=body)
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert isinstance(data, dict)
    return data


def titles(answer: httpx.Response) -> list[str]:
    assert answer.headers["content-type"].startswith("application/json")
    return [e["title"] for e in answer.json()["errors"]]


# --- OAuth 2.0 -----------------------------------------------------------------------------


def test_discovery_names_the_token_endpoint(mas_double: MasDouble) -> None:
    document = httpx.get(mas_double.url + DISCOVERY_PATH).json()
    assert document["token_endpoint"] == mas_double.url + OAUTH_TOKEN_PATH
    assert document["issuer"] == mas_double.url + "/"
    assert "client_credentials" in document["grant_types_supported"]


def test_discovery_advertises_the_public_base_when_set() -> None:
    with MasDouble(public_base="https://auth.example.test") as double:
        document = httpx.get(double.url + DISCOVERY_PATH).json()
    assert document["token_endpoint"] == "https://auth.example.test/oauth2/token"


@pytest.mark.parametrize("method", ["basic", "post"])
def test_client_credentials_grant(mas_double: MasDouble, method: str) -> None:
    answer = grant(mas_double, method=method)
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "urn:mas:admin"
    assert body["access_token"].startswith("mat_")
    assert answer.headers["cache-control"] == "no-store"
    assert mas_double.access_tokens_issued == 1


def test_access_token_lifetime_is_configurable() -> None:
    with MasDouble(access_token_lifetime=42) as double:
        assert grant(double).json()["expires_in"] == 42


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"secret": "wrong"}, 401, "invalid_client"),
        ({"secret": "wrong", "method": "post"}, 401, "invalid_client"),
        ({"client_id": "01J44RKQYM4G3TNVANTMTDYTX7"}, 401, "invalid_client"),
        ({"scope": "openid"}, 403, "invalid_scope"),
        ({"scope": ""}, 403, "invalid_scope"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
    ],
)
def test_token_endpoint_refusals(
    mas_double: MasDouble, kwargs: dict[str, str], status: int, error: str
) -> None:
    answer = grant(mas_double, **kwargs)
    assert answer.status_code == status
    assert answer.json()["error"] == error


def test_a_client_not_in_admin_clients_gets_invalid_scope(mas_double: MasDouble) -> None:
    mas_double.add_client("01J44RKQYM4G3TNVANTMTDYTX8", "other-secret", admin=False)
    answer = grant(mas_double, client_id="01J44RKQYM4G3TNVANTMTDYTX8", secret="other-secret")
    assert answer.status_code == 403
    assert answer.json()["error"] == "invalid_scope"


def test_a_client_pinned_to_one_auth_method_refuses_the_other() -> None:
    with MasDouble(client_auth_method="client_secret_post") as double:
        assert grant(double, method="post").status_code == 200
        answer = grant(double, method="basic")
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_the_basic_pair_is_compared_as_it_is_never_form_decoded() -> None:
    # FACTS: MAS 1.22 with the secret `Ab+c/d=e%f g`: the raw pair 200, the encoded one 401.
    secret = "Ab+c/d=e%f g"
    encoded = f"{DEFAULT_CLIENT_ID}:{quote(secret, safe='')}"
    header = "Basic " + base64.b64encode(encoded.encode()).decode("ascii")
    with MasDouble(client_secret=secret) as double:
        assert grant(double, secret=secret).status_code == 200
        answer = httpx.post(
            double.url + OAUTH_TOKEN_PATH,
            data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
            headers={"Authorization": header},
            timeout=5,
        )
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_token_endpoint_without_client_authentication(mas_double: MasDouble) -> None:
    answer = httpx.post(
        mas_double.url + OAUTH_TOKEN_PATH,
        data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_token_endpoint_wants_a_form(mas_double: MasDouble) -> None:
    answer = httpx.post(mas_double.url + OAUTH_TOKEN_PATH, json={"grant_type": "x"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


# --- Admin API authentication --------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "title"),
    [
        ({}, 400, "Missing authorization header"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, 400, "Invalid authorization header"),
        ({"Authorization": "Bearer"}, 400, "Invalid authorization header"),
        ({"Authorization": "Bearer abc"}, 401, "Invalid type of access token"),
        ({"Authorization": "Bearer mat_unknown"}, 401, "Unknown access token"),
    ],
)
def test_admin_api_authorization_header(
    mas_double: MasDouble, headers: dict[str, str], status: int, title: str
) -> None:
    answer = httpx.get(mas_double.url + TOKENS_PATH, headers=headers)
    assert answer.status_code == status
    assert titles(answer) == [title]


def test_expired_access_tokens_get_401(mas_double: MasDouble, api: httpx.Client) -> None:
    assert api.get(TOKENS_PATH).status_code == 200
    mas_double.advance(301)
    answer = api.get(TOKENS_PATH)
    assert answer.status_code == 401
    assert titles(answer) == ["Access token expired"]


def test_expire_access_tokens_hook(mas_double: MasDouble, api: httpx.Client) -> None:
    mas_double.expire_access_tokens()
    assert api.get(TOKENS_PATH).status_code == 401
    fresh = access_token(mas_double)
    answer = api.get(TOKENS_PATH, headers={"Authorization": f"Bearer {fresh}"})
    assert answer.status_code == 200


def test_version(api: httpx.Client) -> None:
    assert api.get("/api/admin/v1/version").json() == {"version": "1.22.0"}


# --- create --------------------------------------------------------------------------------


def test_site_config_answers_what_mas_is_configured_with(
    mas_double: MasDouble, api: httpx.Client
) -> None:
    answer = api.get(SITE_CONFIG_PATH)
    assert answer.status_code == 200
    assert answer.json()["password_registration_token_required"] is True
    mas_double.configure_site(password_registration_token_required=False, captcha_enabled=True)
    changed = api.get(SITE_CONFIG_PATH).json()
    assert (changed["password_registration_token_required"], changed["captcha_enabled"]) == (
        False,
        True,
    )
    with pytest.raises(ValueError, match="no listeners"):
        mas_double.configure_site(listeners=[])


def test_upstream_providers_filter_and_page(mas_double: MasDouble, api: httpx.Client) -> None:
    gated = mas_double.add_upstream_provider("Authentik", registration_token_required=True)
    open_one = mas_double.add_upstream_provider("GitHub", registration_token_required=False)
    mas_double.add_upstream_provider("Old", registration_token_required=False, enabled=False)
    everything = api.get(PROVIDERS_PATH).json()
    assert everything["meta"]["count"] == 3
    enabled = api.get(PROVIDERS_PATH, params={"filter[enabled]": "true", "count": "false"}).json()
    assert "meta" not in enabled
    assert [(p["id"], p["attributes"]["registration_token_required"]) for p in enabled["data"]] == [
        (gated, True),
        (open_one, False),
    ]
    first = api.get(PROVIDERS_PATH, params={"page[first]": "1"}).json()
    assert [p["id"] for p in first["data"]] == [gated]
    assert first["links"]["next"].endswith(f"page[after]={gated}&page[first]=1")
    assert api.get(PROVIDERS_PATH, params={"filter[enabled]": "maybe"}).status_code == 400


def test_create_returns_the_json_api_envelope(mas_double: MasDouble, api: httpx.Client) -> None:
    answer = api.post(
        TOKENS_PATH,
        json={"token": "Invite-Alice-1", "usage_limit": 1, "expires_at": "2099-01-02T03:04:05Z"},
    )
    assert answer.status_code == 201
    body = answer.json()
    data = body["data"]
    assert data["type"] == "user-registration_token"
    assert normalize_ulid(data["id"]) == data["id"]
    assert body["links"] == {"self": f"{TOKENS_PATH}/{data['id']}"}
    assert data["links"] == {"self": f"{TOKENS_PATH}/{data['id']}"}
    attributes = data["attributes"]
    assert attributes["token"] == "Invite-Alice-1"
    assert attributes["valid"] is True
    assert attributes["usage_limit"] == 1
    assert attributes["times_used"] == 0
    assert attributes["expires_at"] == "2099-01-02T03:04:05Z"
    assert attributes["last_used_at"] is None
    assert attributes["revoked_at"] is None
    assert parse_rfc3339(attributes["created_at"]) is not None
    assert [t["token"] for t in mas_double.tokens()] == ["Invite-Alice-1"]


def test_create_without_a_token_generates_twelve_alphanumerics(api: httpx.Client) -> None:
    token = create(api)["attributes"]["token"]
    assert len(token) == 12
    assert token.isalnum()
    assert token.isascii()


def test_create_accepts_a_past_expiry_and_reports_the_token_invalid(api: httpx.Client) -> None:
    data = create(api, token="old", expires_at="2000-01-01T00:00:00+02:00")
    assert data["attributes"]["expires_at"] == "1999-12-31T22:00:00Z"
    assert data["attributes"]["valid"] is False


def test_create_a_duplicate_value_is_409(mas_double: MasDouble, api: httpx.Client) -> None:
    create(api, token="same")
    answer = api.post(TOKENS_PATH, json={"token": "same"})
    assert answer.status_code == 409
    assert titles(answer)
    assert len(mas_double.tokens()) == 1


def test_unparseable_json_gets_a_plain_text_400(api: httpx.Client) -> None:
    answer = api.post(
        TOKENS_PATH, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text.startswith("Failed to parse the request body as JSON")


def test_wrong_content_type_gets_a_plain_text_415(api: httpx.Client) -> None:
    answer = api.post(TOKENS_PATH, content=b"{}", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415
    assert answer.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"usage_limit": -1},
        {"usage_limit": "one"},
        {"token": 5},
        {"expires_at": "tomorrow"},
    ],
)
def test_ill_typed_json_gets_a_plain_text_422(api: httpx.Client, body: object) -> None:
    answer = api.post(TOKENS_PATH, json=body)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text.startswith("Failed to deserialize the JSON body")


# --- get, update, revoke, unrevoke ---------------------------------------------------------


def test_get(api: httpx.Client) -> None:
    created = create(api, token="t1")
    answer = api.get(f"{TOKENS_PATH}/{created['id']}")
    assert answer.status_code == 200
    assert answer.json()["data"] == created | {"attributes": created["attributes"]}


def test_get_accepts_a_lower_case_ulid(api: httpx.Client) -> None:
    created = create(api, token="t1")
    answer = api.get(f"{TOKENS_PATH}/{created['id'].lower()}")
    assert answer.status_code == 200
    assert answer.json()["data"]["id"] == created["id"]


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_unknown_id_is_404(api: httpx.Client, method: str) -> None:
    unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    answer = api.request(method, f"{TOKENS_PATH}/{unknown}", json={} if method == "PUT" else None)
    assert answer.status_code == 404
    assert titles(answer) == [f"Registration token with ID {unknown} not found"]


@pytest.mark.parametrize("action", ["revoke", "unrevoke"])
def test_revoking_an_unknown_id_is_404(api: httpx.Client, action: str) -> None:
    unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    answer = api.post(f"{TOKENS_PATH}/{unknown}/{action}")
    assert answer.status_code == 404
    assert titles(answer) == [f"Registration token with ID {unknown} not found"]


@pytest.mark.parametrize(
    "bad", ["not-a-ulid", "01ARZ3NDEKTSV4RRFFQ69G5FA", "81ARZ3NDEKTSV4RRFFQ69G5FAV"]
)
def test_an_id_that_is_no_ulid_is_400(api: httpx.Client, bad: str) -> None:
    answer = api.get(f"{TOKENS_PATH}/{bad}")
    assert answer.status_code == 400
    assert titles(answer)[0] == "Invalid ULID in path"


def test_authentication_comes_before_the_ulid_check(mas_double: MasDouble) -> None:
    answer = httpx.get(f"{mas_double.url}{TOKENS_PATH}/nope")
    assert answer.status_code == 400
    assert titles(answer) == ["Missing authorization header"]


def test_update_is_a_merge_patch(mas_double: MasDouble, api: httpx.Client) -> None:
    token_id = create(api, token="t", usage_limit=1, expires_at="2099-01-01T00:00:00Z")["id"]
    path = f"{TOKENS_PATH}/{token_id}"

    answer = api.put(path, json={"usage_limit": 5})
    assert answer.status_code == 200
    attributes = answer.json()["data"]["attributes"]
    assert (attributes["usage_limit"], attributes["expires_at"]) == (5, "2099-01-01T00:00:00Z")
    assert answer.json()["links"] == {"self": path}

    attributes = api.put(path, json={"expires_at": None}).json()["data"]["attributes"]
    assert (attributes["usage_limit"], attributes["expires_at"]) == (5, None)

    attributes = api.put(path, json={"usage_limit": None}).json()["data"]["attributes"]
    assert attributes["usage_limit"] is None

    attributes = api.put(path, json={}).json()["data"]["attributes"]
    assert (attributes["usage_limit"], attributes["expires_at"]) == (None, None)

    stored = mas_double.token(token_id)
    assert stored is not None
    assert (stored["usage_limit"], stored["expires_at"]) == (None, None)


def test_revoke_and_unrevoke_are_not_idempotent(api: httpx.Client) -> None:
    token_id = create(api, token="t")["id"]
    path = f"{TOKENS_PATH}/{token_id}"

    answer = api.post(f"{path}/revoke")
    assert answer.status_code == 200
    assert answer.json()["links"] == {"self": f"{path}/revoke"}
    attributes = answer.json()["data"]["attributes"]
    assert attributes["revoked_at"] is not None
    assert attributes["valid"] is False

    again = api.post(f"{path}/revoke")
    assert again.status_code == 400
    assert titles(again) == [f"Registration token with ID {token_id} is already revoked"]

    answer = api.post(f"{path}/unrevoke")
    assert answer.status_code == 200
    assert answer.json()["links"] == {"self": f"{path}/unrevoke"}
    assert answer.json()["data"]["attributes"]["revoked_at"] is None
    assert answer.json()["data"]["attributes"]["valid"] is True

    again = api.post(f"{path}/unrevoke")
    assert again.status_code == 400
    assert titles(again) == [f"Registration token with ID {token_id} is not revoked"]


def test_there_is_no_delete(mas_double: MasDouble, api: httpx.Client) -> None:
    token_id = create(api, token="t")["id"]
    answer = api.delete(f"{TOKENS_PATH}/{token_id}")
    assert answer.status_code == 405
    assert api.post(f"{TOKENS_PATH}/{token_id}").status_code == 405
    assert len(mas_double.tokens()) == 1
    assert mas_double.request_count("DELETE", TOKEN_PATH, 405) == 1


# --- validity is computed per request ------------------------------------------------------


def test_valid_follows_the_clock_and_expiry_does_not_revoke(mas_double: MasDouble) -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=UTC)
    mas_double.set_clock(start)
    headers = {"Authorization": f"Bearer {access_token(mas_double)}"}
    with httpx.Client(base_url=mas_double.url, headers=headers) as api:
        token_id = create(api, token="t", expires_at="2030-01-01T00:04:00Z")["id"]
        path = f"{TOKENS_PATH}/{token_id}"
        assert api.get(path).json()["data"]["attributes"]["valid"] is True
        mas_double.advance(239)
        assert api.get(path).json()["data"]["attributes"]["valid"] is True
        mas_double.advance(1)
        attributes = api.get(path).json()["data"]["attributes"]
    assert attributes["valid"] is False
    assert attributes["revoked_at"] is None
    assert mas_double.now() == start + dt.timedelta(minutes=4)


def test_valid_follows_usage(mas_double: MasDouble, api: httpx.Client) -> None:
    token_id = create(api, token="t", usage_limit=1)["id"]
    used = mas_double.simulate_registration(token_id)
    assert used["times_used"] == 1
    assert isinstance(used["last_used_at"], dt.datetime)
    attributes = api.get(f"{TOKENS_PATH}/{token_id}").json()["data"]["attributes"]
    assert attributes["times_used"] == 1
    assert attributes["valid"] is False
    assert parse_rfc3339(attributes["last_used_at"]) is not None
    # Concurrent completions can push times_used past the limit; the double allows it too.
    assert mas_double.simulate_registration(token_id)["times_used"] == 2
    with pytest.raises(ValueError, match="not valid"):
        mas_double.simulate_registration(token_id, require_valid=True)


def test_timestamps_carry_fractional_seconds_only_when_needed(
    mas_double: MasDouble, api: httpx.Client
) -> None:
    mas_double.set_clock(dt.datetime(2020, 1, 1, 12, 0, 0, 123456, tzinfo=UTC))
    created = create(api, token="t")["attributes"]["created_at"]
    assert created == "2020-01-01T12:00:00.123456Z"
    mas_double.set_clock(dt.datetime(2020, 1, 1, 12, 0, 0, tzinfo=UTC))
    assert create(api, token="u")["attributes"]["created_at"] == "2020-01-01T12:00:00Z"


# --- list ----------------------------------------------------------------------------------


def test_list_pages_by_id_with_cursor_links(mas_double: MasDouble, api: httpx.Client) -> None:
    for i in range(25):
        mas_double.add_token(f"token-{i:02d}")
    first = api.get(TOKENS_PATH).json()
    assert first["meta"] == {"count": 25}
    assert len(first["data"]) == 10
    assert first["links"]["self"] == f"{TOKENS_PATH}?page[first]=10"
    assert first["links"]["first"] == f"{TOKENS_PATH}?page[first]=10"
    assert first["links"]["last"] == f"{TOKENS_PATH}?page[last]=10"
    assert "prev" not in first["links"]
    last_id = first["data"][-1]["id"]
    assert first["links"]["next"] == f"{TOKENS_PATH}?page[after]={last_id}&page[first]=10"
    assert all(item["meta"] == {"page": {"cursor": item["id"]}} for item in first["data"])

    seen: list[str] = []
    url: str | None = TOKENS_PATH
    pages = 0
    while url is not None:
        page = api.get(url).json()
        seen += [item["id"] for item in page["data"]]
        url = page["links"].get("next")
        pages += 1
    assert pages == 3
    assert seen == sorted(seen)
    assert [t["id"] for t in mas_double.tokens()] == seen


def test_list_backwards_with_page_last(mas_double: MasDouble, api: httpx.Client) -> None:
    ids = [mas_double.add_token(f"t{i}")["id"] for i in range(5)]
    page = api.get(TOKENS_PATH, params={"page[last]": "2"}).json()
    assert [item["id"] for item in page["data"]] == ids[-2:]
    assert page["links"]["prev"] == f"{TOKENS_PATH}?page[before]={ids[3]}&page[last]=2"
    assert "next" not in page["links"]
    page = api.get(TOKENS_PATH, params={"page[last]": "2", "page[before]": ids[3]}).json()
    assert [item["id"] for item in page["data"]] == ids[1:3]


def test_list_count_parameter(mas_double: MasDouble, api: httpx.Client) -> None:
    for i in range(3):
        mas_double.add_token(f"t{i}")
    without = api.get(TOKENS_PATH, params={"count": "false"}).json()
    assert "meta" not in without
    assert len(without["data"]) == 3
    assert without["links"]["self"] == f"{TOKENS_PATH}?count=false&page[first]=10"
    only = api.get(TOKENS_PATH, params={"count": "only"}).json()
    assert only == {"meta": {"count": 3}, "links": {"self": f"{TOKENS_PATH}?count=only"}}


def test_list_filters(mas_double: MasDouble, api: httpx.Client) -> None:
    past = dt.datetime(2000, 1, 1, tzinfo=UTC)
    fresh = mas_double.add_token("fresh")["id"]
    revoked = mas_double.add_token("revoked", revoked=True)["id"]
    expired = mas_double.add_token("expired", expires_at=past)["id"]
    used_up = mas_double.add_token("used-up", usage_limit=1, times_used=1)["id"]

    def ids(**filters: str) -> list[str]:
        params = {f"filter[{k}]": v for k, v in filters.items()}
        answer = api.get(TOKENS_PATH, params=params)
        assert answer.status_code == 200
        return [item["id"] for item in answer.json()["data"]]

    assert ids(valid="true") == [fresh]
    assert ids(valid="false") == [revoked, expired, used_up]
    assert ids(revoked="true") == [revoked]
    assert ids(expired="true") == [expired]
    assert ids(used="true") == [used_up]
    assert ids(used="false", revoked="false") == [fresh, expired]
    links = api.get(TOKENS_PATH, params={"filter[valid]": "true"}).json()["links"]
    assert links["self"] == f"{TOKENS_PATH}?filter[valid]=true&page[first]=10"


@pytest.mark.parametrize(
    ("params", "title"),
    [
        ({"filter[valid]": "yes"}, "Invalid filter parameters"),
        ({"page[first]": "0"}, "Invalid pagination parameters"),
        ({"page[first]": "ten"}, "Invalid pagination parameters"),
        ({"page[after]": "nope"}, "Invalid pagination parameters"),
        ({"count": "maybe"}, "Invalid pagination parameters"),
        (
            {"page[first]": "1", "page[last]": "1"},
            "Cannot specify both `page[first]` and `page[last]` parameters",
        ),
    ],
)
def test_list_rejects_bad_parameters(api: httpx.Client, params: dict[str, str], title: str) -> None:
    answer = api.get(TOKENS_PATH, params=params)
    assert answer.status_code == 400
    assert titles(answer) == [title]


# --- ULIDs ---------------------------------------------------------------------------------


def test_ulids_are_monotonic_even_within_a_millisecond_or_backwards() -> None:
    generator = UlidGenerator()
    now = dt.datetime(2030, 1, 1, tzinfo=UTC)
    ids = [generator.new(now) for _ in range(100)]
    ids.append(generator.new(now - dt.timedelta(days=1)))
    ids.append(generator.new(now + dt.timedelta(milliseconds=1)))
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(normalize_ulid(i) == i for i in ids)
    # The first ten characters encode the milliseconds since the epoch.
    millis = 0
    for char in ids[0][:10]:
        millis = millis * 32 + CROCKFORD.index(char)
    assert millis == int(now.timestamp() * 1000)


def test_rfc3339_helpers() -> None:
    assert parse_rfc3339("2030-01-01T00:00:00.123456789Z") == dt.datetime(
        2030, 1, 1, 0, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_rfc3339("2030-01-01 00:00:00Z") is None
    assert parse_rfc3339("2030-02-30T00:00:00Z") is None
    assert format_rfc3339(dt.datetime(2030, 1, 1, 0, 0, 0, 5000, tzinfo=UTC)).endswith(".005Z")


# --- hooks and faults ----------------------------------------------------------------------


def test_tokens_snapshot_and_delete_all(mas_double: MasDouble, api: httpx.Client) -> None:
    create(api, token="a")
    create(api, token="b", usage_limit=2)
    snapshot = mas_double.tokens()
    assert [t["token"] for t in snapshot] == ["a", "b"]
    assert snapshot[1]["usage_limit"] == 2
    assert isinstance(snapshot[0]["created_at"], dt.datetime)
    mas_double.delete_all()
    assert mas_double.tokens() == []
    assert api.get(f"{TOKENS_PATH}/{snapshot[0]['id']}").status_code == 404


def test_fail_next(mas_double: MasDouble, api: httpx.Client) -> None:
    mas_double.fail_next(2, status=503, retry_after=7)
    first = api.get(TOKENS_PATH)
    assert first.status_code == 503
    assert first.headers["retry-after"] == "7"
    assert titles(first)
    assert api.post(TOKENS_PATH, json={"token": "x"}).status_code == 503
    assert mas_double.tokens() == []
    assert api.get(TOKENS_PATH).status_code == 200


def test_fail_next_after_commit(mas_double: MasDouble, api: httpx.Client) -> None:
    mas_double.fail_next(1, status=500, commit=True)
    assert api.post(TOKENS_PATH, json={"token": "x"}).status_code == 500
    assert [t["token"] for t in mas_double.tokens()] == ["x"]


def test_fail_next_for_one_method_leaves_other_methods_alone(
    mas_double: MasDouble, api: httpx.Client
) -> None:
    mas_double.fail_next(1, status=500, method="POST")
    assert api.get(TOKENS_PATH).status_code == 200
    assert api.post(TOKENS_PATH, json={"token": "y"}).status_code == 500
    assert api.post(TOKENS_PATH, json={"token": "y"}).status_code == 201


def test_fail_next_with_plain_text(mas_double: MasDouble, api: httpx.Client) -> None:
    mas_double.fail_next(1, status=400, text="Failed to parse the request body as JSON")
    answer = api.get(TOKENS_PATH)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/plain")


def test_fail_next_on_the_token_endpoint(mas_double: MasDouble) -> None:
    mas_double.fail_next(1, status=502, target="token")
    assert grant(mas_double).status_code == 502
    assert grant(mas_double).status_code == 200


def test_delay(mas_double: MasDouble, api: httpx.Client) -> None:
    mas_double.delay(0.3)
    started = time.perf_counter()
    assert api.get(TOKENS_PATH).status_code == 200
    assert time.perf_counter() - started >= 0.3
    mas_double.delay(0)
    started = time.perf_counter()
    assert api.get(TOKENS_PATH).status_code == 200
    assert time.perf_counter() - started < 0.3


def test_drop_response_after_commit(mas_double: MasDouble, api: httpx.Client) -> None:
    mas_double.drop_response_after_commit_next(1)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(TOKENS_PATH, json={"token": "lost"})
    assert [t["token"] for t in mas_double.tokens()] == ["lost"]
    assert mas_double.request_count("POST", TOKENS_PATH, 0) == 1
    assert api.post(TOKENS_PATH, json={"token": "lost"}).status_code == 409


def test_request_log_and_counts(mas_double: MasDouble, api: httpx.Client) -> None:
    token_id = create(api, token="t")["id"]
    api.post(f"{TOKENS_PATH}/{token_id}/revoke")
    api.post(f"{TOKENS_PATH}/{token_id}/revoke")
    counts = mas_double.request_counts()
    assert counts[("POST", OAUTH_TOKEN_PATH, 200)] == 1
    assert counts[("POST", TOKENS_PATH, 201)] == 1
    assert counts[("POST", REVOKE_PATH, 200)] == 1
    assert counts[("POST", REVOKE_PATH, 400)] == 1
    assert mas_double.request_count(path=REVOKE_PATH) == 2
    log = mas_double.request_log()
    assert log[-1].path == f"{TOKENS_PATH}/{token_id}/revoke"
    mas_double.reset_request_log()
    assert mas_double.request_log() == []


def test_control_api(mas_double: MasDouble, api: httpx.Client) -> None:
    control = httpx.Client(base_url=mas_double.url + "/__double__", timeout=5)
    with control:
        added = control.post("/tokens", json={"token": "via-control", "usage_limit": 1})
        assert added.status_code == 201
        token_id = added.json()["id"]
        assert control.post("/tokens", json={"token": "via-control"}).status_code == 409
        assert [t["token"] for t in control.get("/tokens").json()] == ["via-control"]
        used = control.post(f"/tokens/{token_id}/use").json()
        assert used["times_used"] == 1
        assert control.post(f"/tokens/{token_id}/use").status_code == 409
        assert control.post(f"/tokens/{token_id}/use?force=true").json()["times_used"] == 2
        assert control.get(f"/tokens/{token_id}").json()["valid"] is False
        assert control.post("/tokens/01ARZ3NDEKTSV4RRFFQ69G5FAV/use").status_code == 404

        now = control.post("/clock", json={"set": "2031-05-06T07:08:09Z"}).json()["now"]
        assert now == "2031-05-06T07:08:09Z"
        assert control.post("/clock", json={"advance": 60}).json()["now"] == "2031-05-06T07:09:09Z"
        assert control.get("/clock").json()["now"] == "2031-05-06T07:09:09Z"
        control.post("/clock", json={"set": None})

        control.post("/faults", json={"fail_next": {"n": 1, "status": 502}})
        assert api.get(TOKENS_PATH).status_code == 502
        control.post("/faults", json={"delay": {"seconds": 5}, "drop_next": 1})
        control.delete("/faults")
        assert api.get(TOKENS_PATH).status_code == 200

        control.post("/expire-access-tokens")
        assert api.get(TOKENS_PATH).status_code == 401

        counts = control.get("/requests").json()["counts"]
        assert {"method": "GET", "path": TOKENS_PATH, "status": 502, "count": 1} in counts
        assert control.get("/spec-violations").json() == {"response": [], "request": []}

        assert control.delete("/tokens").status_code == 200
        assert control.get("/tokens").json() == []


# --- the spec check itself -----------------------------------------------------------------


GOOD_TOKEN = {
    "type": "user-registration_token",
    "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "attributes": {
        "token": "abc",
        "valid": True,
        "usage_limit": None,
        "times_used": 0,
        "created_at": "2030-01-01T00:00:00Z",
        "last_used_at": None,
        "expires_at": None,
        "revoked_at": None,
    },
    "links": {"self": f"{TOKENS_PATH}/01ARZ3NDEKTSV4RRFFQ69G5FAV"},
}


def _with(document: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(document))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


_DELETE = object()


def test_the_validator_accepts_a_conforming_body(mas_double: MasDouble) -> None:
    body = {"data": GOOD_TOKEN, "links": GOOD_TOKEN["links"]}
    assert mas_double.spec.validate_response("GET", TOKEN_PATH, 200, body) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("data", "attributes", "valid"), "yes"),
        (("data", "attributes", "times_used"), _DELETE),
        (("data", "attributes", "created_at"), "yesterday"),
        (("data", "attributes", "usage_limit"), -1),
        (("data", "id"), "not-a-ulid"),
        (("data", "attributes", "revoked"), False),
        (("links",), _DELETE),
    ],
)
def test_the_validator_catches_wrongly_shaped_bodies(
    mas_double: MasDouble, path: tuple[str, ...], value: object
) -> None:
    body = _with({"data": GOOD_TOKEN, "links": GOOD_TOKEN["links"]}, path, value)
    assert mas_double.spec.validate_response("GET", TOKEN_PATH, 200, body) != []


def test_the_validator_checks_errors_and_undocumented_statuses(mas_double: MasDouble) -> None:
    spec = mas_double.spec
    assert spec.validate_response("POST", TOKENS_PATH, 409, {"errors": [{"title": "x"}]}) == []
    assert spec.validate_response("POST", TOKENS_PATH, 409, {"error": "x"}) != []
    assert spec.validate_response("POST", TOKENS_PATH, 200, {}) != []
    assert spec.validate_response("DELETE", TOKENS_PATH, 200, {}) != []
    assert spec.validate_request("PUT", TOKEN_PATH, {"usage_limit": None}) == []
    assert spec.validate_request("PUT", TOKEN_PATH, {"usage_limit": "x"}) != []


def test_a_served_answer_that_breaks_the_spec_is_recorded(
    mas_double: MasDouble, api: httpx.Client
) -> None:
    token_id = create(api, token="t")["id"]

    def drop_valid(body: Any) -> Any:
        del body["data"]["attributes"]["valid"]
        return body

    mas_double.mangle_next_response(drop_valid)
    assert api.get(f"{TOKENS_PATH}/{token_id}").status_code == 200
    assert len(mas_double.spec_violations) == 1
    assert "'valid' is a required property" in mas_double.spec_violations[0]
    mas_double.spec_violations.clear()


def test_the_spec_is_found_beside_the_repo_or_via_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert default_spec_path() == REPO.parent / "shared/reference/mas/admin-api-spec.json"
    missing = tmp_path / "nowhere.json"
    monkeypatch.setenv("MAS_ADMIN_API_SPEC", str(missing))
    assert default_spec_path() == missing
    with pytest.raises(FileNotFoundError, match="MAS_ADMIN_API_SPEC"):
        AdminApiSpec()


# --- standalone ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_runs_standalone_and_stops_on_sigterm(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("standalone-secret\n")
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.doubles.mas",
            "--port",
            str(port),
            "--client-id",
            "01J44RKQYM4G3TNVANTMTDYTX9",
            "--client-secret-file",
            str(secret_file),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        ready = threading.Event()
        lines: list[str] = []

        def read_first_line() -> None:
            assert process.stdout is not None
            lines.append(process.stdout.readline())
            ready.set()

        threading.Thread(target=read_first_line, daemon=True).start()
        assert ready.wait(20), "the standalone double did not start"
        assert lines[0].strip() == f"MAS double listening on http://127.0.0.1:{port}"
        answer = httpx.post(
            f"http://127.0.0.1:{port}{OAUTH_TOKEN_PATH}",
            data={"grant_type": "client_credentials", "scope": "urn:mas:admin"},
            auth=("01J44RKQYM4G3TNVANTMTDYTX9", "standalone-secret"),
        )
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
