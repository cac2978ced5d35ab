"""The real MAS client, token backend and OAuth auth against the MAS double, over sockets.

Nothing here is mocked: an `httpx.AsyncClient` with explicit timeouts talks to the double's
HTTP server, so these tests cover what the operator will send and how it reads every answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from matrix_invite_operator.backends import TokenBackend, TokenState
from matrix_invite_operator.backends.mas import (
    UNSET,
    Endpoint,
    MasAdminClient,
    MasTokenBackend,
    MasUnavailable,
    RegistrationToken,
    RequestOutcome,
)
from matrix_invite_operator.backends.oauth import ClientAuthMethod, ClientCredentialsAuth
from matrix_invite_operator.errors import (
    BackendAuthError,
    BackendMisdirected,
    BackendRejected,
    BackendUnavailable,
    ConfigurationError,
    PermanentError,
    TokenConflict,
    TokenNotFound,
    TransientError,
)
from pydantic import SecretStr

from tests.contract.mas_request_counter import MasRequestCounter
from tests.doubles.mas import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DISCOVERY_PATH,
    OAUTH_TOKEN_PATH,
    TOKEN_PATH,
    TOKENS_PATH,
    MasDouble,
)

UTC = dt.UTC
TIMEOUT = httpx.Timeout(2.0, connect=1.0)
INVITE = SecretStr("Invite-Alice-7f3k")


class Harness:
    """One client stack against one double, recording every error it sees."""

    def __init__(
        self,
        double: MasDouble,
        http: httpx.AsyncClient,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        secret: str = DEFAULT_CLIENT_SECRET,
        method: ClientAuthMethod = "client_secret_basic",
        discover: bool = True,
        clock: Any = None,
    ) -> None:
        self.double = double
        self.secret = secret
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.auth = ClientCredentialsAuth(
            client_id,
            SecretStr(secret),
            issuer=double.url if discover else None,
            token_endpoint=None if discover else double.url + OAUTH_TOKEN_PATH,
            client_auth_method=method,
            **extra,
        )
        self.observed: list[tuple[str, str, str, float]] = []
        self.counter = MasRequestCounter()

        def observe(endpoint: str, method: str, outcome: str, seconds: float) -> None:
            self.observed.append((endpoint, method, outcome, seconds))
            self.counter.record(endpoint, method, outcome, seconds)

        self.client = MasAdminClient(http, double.url, auth=self.auth, on_request=observe)
        self.backend = MasTokenBackend(self.client)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def mas(mas_double: MasDouble, http: httpx.AsyncClient) -> Harness:
    return Harness(mas_double, http)


SECRETS_SEEN: list[str] = [DEFAULT_CLIENT_SECRET, INVITE.get_secret_value()]


def assert_no_secrets(thing: object, *more: str) -> None:
    """Neither the text nor the repr of `thing` (nor of its causes) shows a secret value."""
    pending: list[object] = [thing]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if id(item) in seen or item is None:
            continue
        seen.add(id(item))
        for text in (str(item), repr(item)):
            for secret in (*SECRETS_SEEN, *more):
                assert secret not in text, f"{type(item).__name__} shows a secret: {text}"
        if isinstance(item, BaseException):
            pending += [item.__cause__, item.__context__, *item.args]


def token_count(double: MasDouble, value: SecretStr) -> int:
    return sum(t["token"] == value.get_secret_value() for t in double.tokens())


# --- the happy paths -----------------------------------------------------------------------


async def test_the_backend_satisfies_the_protocol(mas: Harness) -> None:
    backend: TokenBackend = mas.backend
    assert isinstance(backend, MasTokenBackend)
    await backend.aclose()


async def test_create_and_get(mas: Harness) -> None:
    expires = dt.datetime(2099, 5, 6, 7, 8, 9, tzinfo=UTC)
    created = await mas.client.create_token(INVITE, usage_limit=1, expires_at=expires)
    assert isinstance(created, RegistrationToken)
    assert created.attributes.token.get_secret_value() == INVITE.get_secret_value()
    assert created.attributes.usage_limit == 1
    assert created.attributes.expires_at == expires
    assert created.attributes.valid is True
    assert created.attributes.created_at.tzinfo is not None
    fetched = await mas.client.get_token(created.id)
    assert fetched == created
    assert_no_secrets(created)
    assert_no_secrets(created.to_state())


async def test_create_with_offset_timestamps_normalises_to_utc(mas: Harness) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    created = await mas.client.create_token(
        INVITE, expires_at=dt.datetime(2099, 1, 1, 2, 0, tzinfo=plus_two)
    )
    assert created.attributes.expires_at == dt.datetime(2099, 1, 1, 0, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        await mas.client.create_token(SecretStr("naive"), expires_at=dt.datetime(2099, 1, 1))


async def test_create_without_a_value_lets_mas_pick(mas: Harness) -> None:
    created = await mas.client.create_token()
    assert len(created.attributes.token.get_secret_value()) == 12
    assert created.attributes.usage_limit is None


async def test_server_version(mas: Harness) -> None:
    assert await mas.client.server_version() == "1.22.0"


async def test_list_follows_cursor_pages(mas: Harness) -> None:
    for i in range(250):
        mas.double.add_token(f"seeded-{i:03d}")
    mas.double.reset_request_log()
    listed = [token async for token in mas.client.list_tokens(page_size=100)]
    assert [t.id for t in listed] == [t["id"] for t in mas.double.tokens()]
    assert len(listed) == 250
    assert mas.double.request_count("GET", TOKENS_PATH) == 3
    assert mas.counter.count(Endpoint.TOKENS, "GET", RequestOutcome.OK) == 3


async def test_list_an_exact_multiple_of_the_page_size(mas: Harness) -> None:
    for i in range(20):
        mas.double.add_token(f"seeded-{i:02d}")
    listed = [t async for t in mas.client.list_tokens(page_size=10)]
    assert len(listed) == 20
    assert mas.double.request_count("GET", TOKENS_PATH) == 2


async def test_the_double_filters_lists_as_mas_does(mas: Harness, http: httpx.AsyncClient) -> None:
    """The operator lists every token; the double's filters serve tests that ask it directly."""
    mas.double.add_token("fresh")
    mas.double.add_token("revoked", revoked=True)
    mas.double.add_token("old", expires_at=dt.datetime(2000, 1, 1, tzinfo=UTC))

    async def values(**filters: bool) -> list[str]:
        params = {f"filter[{name}]": str(value).lower() for name, value in filters.items()}
        answer = await http.get(mas.double.url + TOKENS_PATH, params=params, auth=mas.auth)
        answer.raise_for_status()
        return [t["attributes"]["token"] for t in answer.json()["data"]]

    assert await values() == ["fresh", "revoked", "old"]
    assert await values(valid=True) == ["fresh"]
    assert await values(revoked=True) == ["revoked"]
    assert await values(expired=True) == ["old"]
    assert await values(valid=False, revoked=False) == ["old"]
    assert [t.attributes.token.get_secret_value() async for t in mas.client.list_tokens(1)] == [
        "fresh",
        "revoked",
        "old",
    ]


async def test_list_all_gives_token_states(mas: Harness) -> None:
    mas.double.add_token("a", usage_limit=3, times_used=1)
    states = [s async for s in mas.backend.list_all()]
    assert len(states) == 1
    assert isinstance(states[0], TokenState)
    assert (states[0].usage_limit, states[0].times_used, states[0].valid) == (3, 1, True)


async def test_update_sends_explicit_nulls_and_leaves_unset_fields(mas: Harness) -> None:
    expires = dt.datetime(2099, 1, 1, tzinfo=UTC)
    created = await mas.client.create_token(INVITE, usage_limit=1, expires_at=expires)

    updated = await mas.client.update_token(created.id, usage_limit=5)
    assert (updated.attributes.usage_limit, updated.attributes.expires_at) == (5, expires)

    updated = await mas.client.update_token(created.id, expires_at=None)
    assert (updated.attributes.usage_limit, updated.attributes.expires_at) == (5, None)

    updated = await mas.client.update_token(created.id, usage_limit=None, expires_at=UNSET)
    assert (updated.attributes.usage_limit, updated.attributes.expires_at) == (None, None)

    state = await mas.backend.update(created.id, usage_limit=2, expires_at=expires)
    assert (state.usage_limit, state.expires_at) == (2, expires)
    state = await mas.backend.update(created.id, usage_limit=None, expires_at=None)
    assert (state.usage_limit, state.expires_at) == (None, None)
    stored = mas.double.token(created.id)
    assert stored is not None
    assert (stored["usage_limit"], stored["expires_at"]) == (None, None)


async def test_revoke_twice_and_unrevoke_twice(mas: Harness) -> None:
    created = await mas.client.create_token(INVITE)

    first = await mas.backend.revoke(created.id)
    assert first is not None
    assert first.revoked
    assert first.valid is False
    second = await mas.backend.revoke(created.id)
    assert second is not None
    assert second.revoked_at == first.revoked_at
    assert mas.double.request_count("POST", f"{TOKEN_PATH}/revoke", 400) == 1

    with pytest.raises(BackendRejected, match="already revoked") as raised:
        await mas.client.revoke_token(created.id)
    assert_no_secrets(raised.value)

    restored = await mas.backend.unrevoke(created.id)
    assert not restored.revoked
    again = await mas.backend.unrevoke(created.id)
    assert not again.revoked
    assert again.valid is True
    assert mas.double.request_count("POST", f"{TOKEN_PATH}/unrevoke", 400) == 1


async def test_unknown_ids(mas: Harness) -> None:
    unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    with pytest.raises(TokenNotFound, match=unknown):
        await mas.client.get_token(unknown)
    assert await mas.backend.read(unknown) is None
    assert await mas.backend.revoke(unknown) is None
    with pytest.raises(TokenNotFound):
        await mas.backend.unrevoke(unknown)
    with pytest.raises(TokenNotFound):
        await mas.backend.update(unknown, usage_limit=1, expires_at=None)
    assert mas.counter.count(outcome=RequestOutcome.NOT_FOUND) == 5


async def test_an_id_that_is_no_ulid_is_rejected(mas: Harness) -> None:
    with pytest.raises(BackendRejected, match="Invalid ULID in path"):
        await mas.client.get_token("NOTAULID")
    with pytest.raises(BackendRejected, match="not a MAS token id"):
        await mas.client.get_token("../../users")


# --- issue: never two tokens for one value -------------------------------------------------


async def test_issue_creates_then_finds_the_existing_token_on_409(mas: Harness) -> None:
    first = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    for i in range(150):
        mas.double.add_token(f"filler-{i:03d}")
    second = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert second.id == first.id
    assert token_count(mas.double, INVITE) == 1
    assert mas.double.request_count("POST", TOKENS_PATH, 409) == 1
    with pytest.raises(TokenConflict) as raised:
        await mas.client.create_token(INVITE)
    assert_no_secrets(raised.value)


async def test_issue_after_the_500_of_a_racing_create(mas: Harness) -> None:
    # The other create won; ours got MAS's 500 instead of a 409.
    mas.double.fail_next(1, status=500, commit=True)
    state = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert token_count(mas.double, INVITE) == 1
    assert state.id == mas.double.tokens()[0]["id"]
    assert mas.double.request_count("GET", TOKENS_PATH) == 1


async def test_issue_after_a_500_that_created_nothing(mas: Harness) -> None:
    mas.double.fail_next(1, status=500)
    with pytest.raises(BackendUnavailable) as raised:
        await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert raised.value.retry_after > 0
    assert mas.double.tokens() == []
    assert_no_secrets(raised.value)


async def test_issue_after_a_lost_answer(mas: Harness) -> None:
    mas.double.drop_response_after_commit_next(1)
    state = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert token_count(mas.double, INVITE) == 1
    assert state.token.get_secret_value() == INVITE.get_secret_value()


async def test_a_lost_answer_on_a_plain_create_is_unavailable(mas: Harness) -> None:
    mas.double.drop_response_after_commit_next(1)
    with pytest.raises(MasUnavailable) as raised:
        await mas.client.create_token(INVITE)
    assert raised.value.may_have_taken_effect
    assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
    assert_no_secrets(raised.value)


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_both_client_auth_methods(
    mas_double: MasDouble, http: httpx.AsyncClient, method: ClientAuthMethod
) -> None:
    mas = Harness(mas_double, http, method=method)
    await mas.client.create_token(INVITE)
    assert mas.auth.token_requests == 1
    assert mas_double.request_count("POST", OAUTH_TOKEN_PATH, 200) == 1


#: An `openssl rand -base64`-like secret with every character form-urlencoding changes.
AWKWARD_SECRET = "Ab+c/d=e%f g"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_a_secret_that_form_encoding_would_change_is_accepted(
    http: httpx.AsyncClient, method: ClientAuthMethod
) -> None:
    # MAS compares the Basic password as it is (mas/FACTS.md): encoded, it got 401.
    with MasDouble(client_secret=AWKWARD_SECRET, client_auth_method=method) as double:
        mas = Harness(double, http, secret=AWKWARD_SECRET, method=method)
        await mas.client.create_token(INVITE)
        assert double.request_count("POST", OAUTH_TOKEN_PATH, 401) == 0
        assert double.request_count("POST", OAUTH_TOKEN_PATH, 200) == 1
        assert [t["token"] for t in double.tokens()] == [INVITE.get_secret_value()]


def test_a_client_id_basic_cannot_carry_is_refused_at_startup() -> None:
    with pytest.raises(ConfigurationError, match="contains a colon"):
        ClientCredentialsAuth("a:b", SecretStr("s"), issuer="http://mas")
    ClientCredentialsAuth(
        "a:b", SecretStr("s"), issuer="http://mas", client_auth_method="client_secret_post"
    )


async def test_a_client_pinned_to_the_other_auth_method(http: httpx.AsyncClient) -> None:
    with MasDouble(client_auth_method="client_secret_post") as double:
        mas = Harness(double, http, method="client_secret_basic")
        with pytest.raises(BackendAuthError, match="another client_auth_method"):
            await mas.client.server_version()


async def test_the_access_token_is_cached(mas: Harness) -> None:
    for i in range(10):
        await mas.client.create_token(SecretStr(f"t{i}"))
    assert mas.auth.token_requests == 1
    assert mas.auth.discovery_requests == 1
    assert mas.double.request_count(path=OAUTH_TOKEN_PATH) == 1
    assert mas.double.request_count(path=DISCOVERY_PATH) == 1


async def test_concurrent_calls_share_one_token_request(mas: Harness) -> None:
    await asyncio.gather(*(mas.client.create_token(SecretStr(f"t{i}")) for i in range(20)))
    assert mas.auth.token_requests == 1
    assert mas.double.request_count(path=OAUTH_TOKEN_PATH) == 1
    assert len(mas.double.tokens()) == 20


async def test_an_explicit_token_endpoint_skips_discovery(
    mas_double: MasDouble, http: httpx.AsyncClient
) -> None:
    mas = Harness(mas_double, http, discover=False)
    await mas.client.server_version()
    assert mas.auth.discovery_requests == 0
    assert mas_double.request_count(path=DISCOVERY_PATH) == 0


async def test_renewal_after_a_401(mas: Harness) -> None:
    await mas.client.server_version()
    mas.double.expire_access_tokens()
    created = await mas.client.create_token(INVITE)
    assert created.attributes.token.get_secret_value() == INVITE.get_secret_value()
    assert mas.auth.token_requests == 2
    assert mas.double.request_count("POST", TOKENS_PATH, 401) == 1
    assert mas.double.request_count("POST", TOKENS_PATH, 201) == 1
    assert token_count(mas.double, INVITE) == 1


async def test_renewal_shortly_before_expiry(
    mas_double: MasDouble, http: httpx.AsyncClient
) -> None:
    now = [1000.0]
    mas = Harness(mas_double, http, clock=lambda: now[0])
    await mas.client.server_version()
    now[0] += 269  # 300 s token, renewed 30 s early
    await mas.client.server_version()
    assert mas.auth.token_requests == 1
    now[0] += 1
    await mas.client.server_version()
    assert mas.auth.token_requests == 2
    assert mas_double.request_count(status=401) == 0


async def test_a_second_401_is_an_auth_error(http: httpx.AsyncClient) -> None:
    # Tokens that are born expired: renewing cannot help.
    with MasDouble(access_token_lifetime=0) as double:
        mas = Harness(double, http)
        with pytest.raises(BackendAuthError, match="401 twice") as raised:
            await mas.client.get_token("01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert double.request_count(status=401) == 2
        assert mas.counter.count(outcome=RequestOutcome.AUTH_FAILED) == 1
        assert isinstance(raised.value, PermanentError)
        assert_no_secrets(raised.value)


async def test_wrong_secret(mas_double: MasDouble, http: httpx.AsyncClient) -> None:
    mas = Harness(mas_double, http, secret="wrong-secret-value")
    with pytest.raises(BackendAuthError) as raised:
        await mas.client.create_token(INVITE)
    message = str(raised.value)
    assert message.startswith(
        f"MAS refused the client credentials for client {DEFAULT_CLIENT_ID} (401 invalid_client)"
    )
    assert mas_double.tokens() == []
    assert_no_secrets(raised.value, "wrong-secret-value")
    assert_no_secrets(mas.auth, "wrong-secret-value")


async def test_a_client_that_is_no_admin(mas_double: MasDouble, http: httpx.AsyncClient) -> None:
    mas_double.add_client("01J44RKQYM4G3TNVANTMTDYTX8", "plain-client-secret", admin=False)
    mas = Harness(
        mas_double, http, client_id="01J44RKQYM4G3TNVANTMTDYTX8", secret="plain-client-secret"
    )
    with pytest.raises(BackendAuthError, match=r"policy\.data\.admin_clients") as raised:
        await mas.client.server_version()
    assert "01J44RKQYM4G3TNVANTMTDYTX8" in str(raised.value)
    assert_no_secrets(raised.value, "plain-client-secret")


async def test_a_failing_token_endpoint_is_unavailable(mas: Harness) -> None:
    mas.double.fail_next(1, status=503, target="token", retry_after=12)
    with pytest.raises(BackendUnavailable) as raised:
        await mas.client.server_version()
    assert raised.value.retry_after == 12
    assert await mas.client.server_version() == "1.22.0"


async def test_an_unreachable_token_endpoint_is_unavailable(
    mas_double: MasDouble, http: httpx.AsyncClient
) -> None:
    auth = ClientCredentialsAuth(
        DEFAULT_CLIENT_ID,
        SecretStr(DEFAULT_CLIENT_SECRET),
        token_endpoint=f"http://127.0.0.1:{_closed_port()}/oauth2/token",
        client_auth_method="client_secret_post",
    )
    client = MasAdminClient(http, mas_double.url, auth=auth)
    with pytest.raises(MasUnavailable) as raised:
        await client.create_token(INVITE)
    assert not raised.value.may_have_taken_effect
    assert mas_double.request_count() == 0
    assert_no_secrets(raised.value)


async def test_a_slow_token_endpoint_is_unavailable(mas_double: MasDouble) -> None:
    mas_double.delay(1.0, target="token")
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.3, connect=1.0)) as impatient:
        mas = Harness(mas_double, impatient)
        with pytest.raises(BackendUnavailable, match="in time"):
            await mas.client.server_version()
    assert mas_double.request_count(path=TOKENS_PATH) == 0


def test_auth_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        ClientCredentialsAuth("id", SecretStr("s"))
    with pytest.raises(ConfigurationError):
        ClientCredentialsAuth("id", SecretStr(""), issuer="http://mas")
    with pytest.raises(ConfigurationError):
        ClientCredentialsAuth("id", "plain", issuer="http://mas")  # type: ignore[arg-type]
    auth = ClientCredentialsAuth("id", SecretStr("hush-hush"), token_endpoint="http://mas/t")
    assert "hush-hush" not in repr(auth)


# --- failures ------------------------------------------------------------------------------


async def test_a_500_is_unavailable_and_honours_retry_after(mas: Harness) -> None:
    mas.double.fail_next(1, status=500)
    with pytest.raises(BackendUnavailable) as raised:
        await mas.client.get_token("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert isinstance(raised.value, TransientError)
    assert raised.value.retry_after == 15
    assert "Injected fault" in str(raised.value)
    assert isinstance(raised.value.__cause__, httpx.HTTPStatusError)

    mas.double.fail_next(1, status=503, retry_after=42)
    with pytest.raises(BackendUnavailable) as raised:
        await mas.client.get_token("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert raised.value.retry_after == 42
    assert mas.counter.count(outcome=RequestOutcome.SERVER_ERROR) == 2


async def test_a_timeout_is_unavailable(mas_double: MasDouble) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.3, connect=1.0)) as impatient:
        mas = Harness(mas_double, impatient)
        await mas.client.server_version()
        mas_double.delay(1.0)
        with pytest.raises(BackendUnavailable, match="in time") as raised:
            await mas.client.create_token(INVITE)
    assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
    assert mas.counter.count(outcome=RequestOutcome.TIMEOUT) == 1
    assert_no_secrets(raised.value)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_connection_refused_is_unavailable(http: httpx.AsyncClient) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    auth = ClientCredentialsAuth(DEFAULT_CLIENT_ID, SecretStr(DEFAULT_CLIENT_SECRET), issuer=url)
    counter = MasRequestCounter()
    client = MasAdminClient(http, url, auth=auth, on_request=counter.record)
    with pytest.raises(MasUnavailable) as raised:
        await client.create_token(INVITE)
    assert not raised.value.may_have_taken_effect
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert counter.count(outcome=RequestOutcome.CONNECTION_ERROR) == 1
    assert_no_secrets(raised.value)
    backend = MasTokenBackend(client)
    with pytest.raises(BackendUnavailable):
        await backend.issue(INVITE, usage_limit=1, expires_at=None)


async def test_a_plain_text_400_is_rejected(mas: Harness) -> None:
    mas.double.fail_next(
        1,
        status=400,
        text=f"Failed to parse the request body as JSON: near {INVITE.get_secret_value()}",
    )
    with pytest.raises(BackendRejected, match="Failed to parse the request body") as raised:
        await mas.client.create_token(INVITE)
    assert "<token>" in str(raised.value)
    assert_no_secrets(raised.value)


async def test_a_non_json_success_is_rejected(mas: Harness) -> None:
    mas.double.mangle_next_response(lambda body: {"data": "nonsense", "links": {}})
    with pytest.raises(BackendRejected, match="unexpected shape"):
        await mas.client.get_token(mas.double.add_token("x")["id"])
    mas.double.spec_violations.clear()


async def test_an_unexpected_shape_never_quotes_the_token(mas: Harness) -> None:
    def bad_valid(body: Any) -> Any:
        body["data"]["attributes"]["valid"] = INVITE.get_secret_value()
        return body

    token_id = mas.double.add_token(INVITE.get_secret_value())["id"]
    mas.double.mangle_next_response(bad_valid)
    with pytest.raises(BackendRejected, match=r"data\.attributes\.valid") as raised:
        await mas.client.get_token(token_id)
    assert raised.value.__cause__ is None
    assert_no_secrets(raised.value)
    mas.double.spec_violations.clear()


async def test_a_base_url_without_the_admin_api(
    mas_double: MasDouble, http: httpx.AsyncClient
) -> None:
    mas = Harness(mas_double, http)
    client = MasAdminClient(http, mas_double.url + "/elsewhere", auth=mas.auth)
    with pytest.raises(BackendMisdirected, match="adminapi") as raised:
        [t async for t in client.list_tokens()]
    assert raised.value.needs_spec_change is False


async def test_a_bare_404_for_a_token_is_not_a_missing_token(
    mas_double: MasDouble, http: httpx.AsyncClient
) -> None:
    # A listener without the adminapi resource answers every path 404, without MAS's JSON error
    # envelope: revoking must not take that for "the token is gone" and report success.
    mas = Harness(mas_double, http)
    client = MasAdminClient(http, mas_double.url + "/elsewhere", auth=mas.auth)
    with pytest.raises(BackendMisdirected, match="MATRIX_INVITE_MAS_URL"):
        await MasTokenBackend(client).revoke("01FSHN9AG0MZAA6S4AF7CTV32E")


async def test_a_next_link_that_does_not_advance_stops_the_listing(mas: Harness) -> None:
    ids = [mas.double.add_token(f"t{i}")["id"] for i in range(3)]

    def repeat_first_cursor(body: Any) -> Any:
        body["links"]["next"] = f"{TOKENS_PATH}?page[after]={ids[0]}&page[first]=1"
        return body

    mas.double.mangle_next_response(lambda body: body)
    mas.double.mangle_next_response(repeat_first_cursor)
    with pytest.raises(BackendRejected, match="instead of looping"):
        [t async for t in mas.client.list_tokens(page_size=1)]


# --- observation ---------------------------------------------------------------------------


async def test_requests_are_counted_and_reported(mas: Harness) -> None:
    created = await mas.client.create_token(INVITE)
    with pytest.raises(TokenConflict):
        await mas.client.create_token(INVITE)
    await mas.client.revoke_token(created.id)
    assert mas.counter.snapshot() == {
        ("/user-registration-tokens", "POST", "ok"): 1,
        ("/user-registration-tokens", "POST", "conflict"): 1,
        ("/user-registration-tokens/{id}/revoke", "POST", "ok"): 1,
    }
    assert [labels[:3] for labels in mas.observed] == [
        ("/user-registration-tokens", "POST", "ok"),
        ("/user-registration-tokens", "POST", "conflict"),
        ("/user-registration-tokens/{id}/revoke", "POST", "ok"),
    ]
    assert all(labels[3] >= 0 for labels in mas.observed)
    assert mas.counter.seconds() > 0


async def test_reprs_show_no_secrets(mas_double: MasDouble, http: httpx.AsyncClient) -> None:
    auth = ClientCredentialsAuth(
        DEFAULT_CLIENT_ID, SecretStr(DEFAULT_CLIENT_SECRET), issuer=mas_double.url
    )
    client = MasAdminClient(http, mas_double.url, auth=auth)
    await client.create_token(INVITE)
    for thing in (auth, client, MasTokenBackend(client)):
        assert_no_secrets(thing)


async def test_discovery_and_token_requests_carry_the_clients_user_agent(
    mas_double: MasDouble,
) -> None:
    async with httpx.AsyncClient(
        timeout=TIMEOUT, headers={"User-Agent": "matrix-invite-operator"}
    ) as named:
        await Harness(mas_double, named).client.server_version()
    agents = {(r.path_template, r.user_agent) for r in mas_double.request_log()}
    assert agents == {
        (DISCOVERY_PATH, "matrix-invite-operator"),
        (OAUTH_TOKEN_PATH, "matrix-invite-operator"),
        ("/api/admin/v1/version", "matrix-invite-operator"),
    }


# --- an overloaded MAS gets no more load (issue 21, defect 4) -------------------------------

#: Enough tokens that listing them all takes several pages of the backend's 100.
CROWD = 250


def _crowd(double: MasDouble) -> None:
    for _ in range(CROWD):
        double.add_token()


@pytest.mark.parametrize("status", [429, 503])
async def test_a_create_refused_for_load_is_not_looked_up(mas: Harness, status: int) -> None:
    """429 and 503 say MAS did not act: no search for a token that cannot exist, and the
    error carries MAS's Retry-After for Kopf's next attempt."""
    _crowd(mas.double)
    mas.double.fail_next(1, status=status, retry_after=7, method="POST")
    with pytest.raises(MasUnavailable) as raised:
        await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert not raised.value.may_have_taken_effect
    assert raised.value.retry_after == 7
    assert mas.double.request_count("POST", TOKENS_PATH) == 1
    assert mas.double.request_count("GET", TOKENS_PATH) == 0
    assert token_count(mas.double, INVITE) == 0


async def test_retry_after_as_an_http_date_is_honoured(mas: Harness) -> None:
    when = dt.datetime.now(UTC) + dt.timedelta(seconds=90)
    mas.double.fail_next(1, status=429, retry_after=email.utils.format_datetime(when, usegmt=True))
    with pytest.raises(MasUnavailable) as raised:
        await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert 80 <= raised.value.retry_after <= 90


async def test_a_lost_answer_among_many_tokens_is_found_on_the_newest_page(mas: Harness) -> None:
    """A create whose answer was lost made the newest token: one page of the newest finds it,
    not a listing of all (3 pages here; 50 at 5,000 tokens)."""
    _crowd(mas.double)
    mas.double.drop_response_after_commit_next(1)
    state = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert state.token.get_secret_value() == INVITE.get_secret_value()
    assert mas.double.request_count("GET", TOKENS_PATH) == 1


async def test_a_conflict_looks_newest_first(mas: Harness) -> None:
    _crowd(mas.double)
    first = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    again = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)  # 409: find it
    assert again.id == first.id
    assert mas.double.request_count("GET", TOKENS_PATH) == 1


async def test_a_maybe_created_token_not_on_the_newest_page_is_left_to_the_retry(
    mas: Harness,
) -> None:
    """A 502 from a proxy may or may not hide a create; when the newest page lacks the value,
    the create failure stands (the retry's create then answers 201 or 409)."""
    _crowd(mas.double)
    mas.double.fail_next(1, status=502, method="POST")
    with pytest.raises(MasUnavailable):
        await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert mas.double.request_count("GET", TOKENS_PATH) == 1
    state = await mas.backend.issue(INVITE, usage_limit=1, expires_at=None)
    assert token_count(mas.double, INVITE) == 1
    assert state.token.get_secret_value() == INVITE.get_secret_value()


async def test_newest_tokens_walks_back_through_every_page(mas: Harness) -> None:
    _crowd(mas.double)
    ids = [t["id"] for t in mas.double.tokens()]
    newest = [t.id async for t in mas.client.newest_tokens(page_size=100)]
    assert newest == ids[::-1]
    assert mas.double.request_count("GET", TOKENS_PATH) == 3
