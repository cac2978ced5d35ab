"""The Synapse token backend against a real Synapse (pip, SQLite, loopback), over sockets.

What Synapse really answers is the contract here: no double. Failures Synapse cannot be made
to produce on demand (5xx, timeouts, an echoed token in an error) use httpx's MockTransport.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from matrix_invite_operator.backends import TokenBackend
from matrix_invite_operator.backends.synapse import (
    TOKENS_PATH,
    SynapseAdminClient,
    SynapseTokenBackend,
    token_id_for,
)
from matrix_invite_operator.errors import (
    BackendAuthError,
    BackendMisdirected,
    BackendRejected,
    BackendTlsError,
    BackendUnavailable,
    TokenNotFound,
)
from matrix_invite_operator.reconcile import generate_token
from matrix_invite_operator.settings import Settings
from pydantic import SecretStr

from tests.operator_process import free_port
from tests.servers.synapse import SynapseServer


@dataclass
class Harness:
    synapse: SynapseServer
    http: httpx.AsyncClient
    client: SynapseAdminClient
    backend: SynapseTokenBackend
    sent: list[tuple[str, str]]  # (method, path) of each request to Synapse, in order

    def listings(self) -> int:
        return self.sent.count(("GET", TOKENS_PATH))

    def puts(self) -> int:
        return sum(1 for method, path in self.sent if method == "PUT" and path != TOKENS_PATH)

    def restarted(self) -> SynapseTokenBackend:
        """A second backend on the same Synapse: an operator after a restart (empty map)."""
        return SynapseTokenBackend(
            SynapseAdminClient(self.http, self.synapse.url, SecretStr(self.synapse.admin_token))
        )


@pytest.fixture
async def syn(synapse: SynapseServer) -> AsyncIterator[Harness]:
    sent: list[tuple[str, str]] = []

    async def record(request: httpx.Request) -> None:
        sent.append((request.method, request.url.path))

    async with httpx.AsyncClient(timeout=10, event_hooks={"request": [record]}) as http:
        client = SynapseAdminClient(http, synapse.url, SecretStr(synapse.admin_token))
        yield Harness(synapse, http, client, SynapseTokenBackend(client), sent)


def in_hours(hours: float) -> dt.datetime:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return moment.replace(microsecond=(moment.microsecond // 1000) * 1000)


async def test_the_backend_satisfies_the_protocol(syn: Harness) -> None:
    backend: TokenBackend = syn.backend
    assert backend.name == "Synapse"
    await backend.aclose()


async def test_issue_creates_the_token_with_our_value_and_limits(syn: Harness) -> None:
    token = generate_token()
    expires = in_hours(24)
    state = await syn.backend.issue(token, usage_limit=2, expires_at=expires)

    assert state.token.get_secret_value() == token.get_secret_value()
    assert (state.usage_limit, state.times_used, state.pending) == (2, 0, 0)
    assert state.expires_at == expires
    assert (state.valid, state.revoked) == (True, False)
    stored = syn.synapse.token(token.get_secret_value())
    assert stored is not None
    assert stored["uses_allowed"] == 2
    assert stored["expiry_time"] == int(expires.timestamp() * 1000)


async def test_the_token_id_is_derived_and_reveals_nothing(syn: Harness) -> None:
    token = generate_token()
    state = await syn.backend.issue(token, usage_limit=1, expires_at=None)
    assert re.fullmatch(r"syn-[0-9a-f]{24}", state.id)
    assert state.id == token_id_for(token)
    assert token.get_secret_value() not in state.id
    assert token.get_secret_value() not in repr(state)
    assert state.id != token_id_for(generate_token())


async def test_issue_is_idempotent(syn: Harness) -> None:
    token = generate_token()
    first = await syn.backend.issue(token, usage_limit=1, expires_at=None)
    # Synapse answers 400 M_INVALID_PARAM to the duplicate; we look it up instead.
    again = await syn.restarted().issue(token, usage_limit=5, expires_at=in_hours(1))
    assert again.id == first.id
    assert again.usage_limit == 1, "the existing token is returned as it is, not changed"
    assert len(syn.synapse.tokens()) == 1


async def test_issue_refuses_what_synapse_cannot_hold(syn: Harness) -> None:
    with pytest.raises(BackendRejected, match="A-Za-z0-9"):
        await syn.backend.issue(SecretStr("has space"), usage_limit=1, expires_at=None)
    with pytest.raises(BackendRejected, match="A-Za-z0-9"):
        await syn.backend.issue(SecretStr("x" * 65), usage_limit=1, expires_at=None)
    with pytest.raises(BackendRejected, match="expiry has passed"):
        await syn.backend.issue(generate_token(), usage_limit=1, expires_at=in_hours(-1))
    assert syn.synapse.tokens() == []


async def test_read_knows_issued_tokens_and_lists_once_after_a_restart(syn: Harness) -> None:
    tokens = [generate_token() for _ in range(3)]
    states = [await syn.backend.issue(t, usage_limit=1, expires_at=None) for t in tokens]
    assert await syn.backend.read(states[0].id) == states[0]
    assert syn.listings() == 0, "an issued token is known without listing"

    restarted = syn.restarted()
    for state in states:
        read = await restarted.read(state.id)
        assert read is not None
        assert read.token.get_secret_value() == state.token.get_secret_value()
    assert await restarted.read("syn-000000000000000000000000") is None
    assert await restarted.read("01J44RKQYM4G3TNVANTMTDYTX6") is None  # a MAS id: not ours
    # One listing rebuilt the map; the unknown id did not list again right after it.
    assert syn.listings() == 1


async def test_list_all_yields_every_token_with_usage(syn: Harness) -> None:
    ours = [generate_token() for _ in range(3)]
    for token in ours:
        await syn.backend.issue(token, usage_limit=1, expires_at=None)
    registration = syn.synapse.register(ours[0].get_secret_value())
    assert registration.ok, registration.body

    listed = {state.id: state async for state in syn.restarted().list_all()}
    assert set(listed) == {token_id_for(t) for t in ours}
    used = listed[token_id_for(ours[0])]
    assert (used.times_used, used.pending, used.valid) == (1, 0, False)
    assert listed[token_id_for(ours[1])].valid is True


async def test_a_started_registration_is_pending(syn: Harness) -> None:
    token = generate_token()
    state = await syn.backend.issue(token, usage_limit=1, expires_at=None)
    abandoned = syn.synapse.register(token.get_secret_value(), finish=False)
    assert abandoned.stage == "token"

    read = await syn.backend.read(state.id)
    assert read is not None
    assert (read.pending, read.times_used) == (1, 0)
    # Synapse counts the pending use: nobody else can use the single-use token meanwhile.
    assert read.valid is False
    assert syn.synapse.token_valid(token.get_secret_value()) is False


async def test_update_sets_and_clears_limits(syn: Harness) -> None:
    token = generate_token()
    state = await syn.backend.issue(token, usage_limit=1, expires_at=in_hours(1))
    expires = in_hours(48)

    updated = await syn.backend.update(state.id, usage_limit=3, expires_at=expires)
    assert (updated.usage_limit, updated.expires_at) == (3, expires)
    stored = syn.synapse.token(token.get_secret_value())
    assert stored is not None
    assert (stored["uses_allowed"], stored["expiry_time"]) == (3, int(expires.timestamp() * 1000))

    cleared = await syn.backend.update(state.id, usage_limit=None, expires_at=None)
    assert (cleared.usage_limit, cleared.expires_at, cleared.valid) == (None, None, True)
    stored = syn.synapse.token(token.get_secret_value())
    assert stored is not None
    assert (stored["uses_allowed"], stored["expiry_time"]) == (None, None)

    puts = syn.puts()
    assert await syn.backend.update(state.id, usage_limit=None, expires_at=None) == cleared
    assert syn.puts() == puts, "nothing to change: no PUT"


async def test_update_refuses_a_past_expiry_and_unknown_tokens(syn: Harness) -> None:
    state = await syn.backend.issue(generate_token(), usage_limit=1, expires_at=in_hours(1))
    with pytest.raises(BackendRejected, match=r"spec\.revoked"):
        await syn.backend.update(state.id, usage_limit=1, expires_at=in_hours(-1))
    with pytest.raises(TokenNotFound):
        await syn.backend.update("syn-000000000000000000000000", usage_limit=1, expires_at=None)


async def test_revoke_deletes_the_token(syn: Harness) -> None:
    token = generate_token()
    state = await syn.backend.issue(token, usage_limit=2, expires_at=None)

    revoked = await syn.backend.revoke(state.id)
    assert revoked is not None
    assert (revoked.id, revoked.revoked, revoked.valid, revoked.usage_limit) == (
        state.id,
        True,
        False,
        2,
    )
    assert syn.synapse.token(token.get_secret_value()) is None
    assert await syn.backend.read(state.id) is None
    assert await syn.backend.revoke(state.id) is None, "deleted already: nothing to revoke"
    assert await syn.restarted().revoke(state.id) is None
    refused = syn.synapse.register(token.get_secret_value())
    assert (refused.ok, refused.errcode) == (False, "M_UNAUTHORIZED")


async def test_unrevoke_issues_the_deleted_token_again(syn: Harness) -> None:
    token = generate_token()
    expires = in_hours(5)
    state = await syn.backend.issue(token, usage_limit=2, expires_at=expires)
    await syn.backend.revoke(state.id)

    restored = await syn.backend.unrevoke(state.id)
    assert (restored.id, restored.revoked, restored.valid) == (state.id, False, True)
    assert (restored.usage_limit, restored.expires_at) == (2, expires)
    assert syn.synapse.token(token.get_secret_value()) is not None
    assert await syn.backend.unrevoke(state.id) == restored, "not revoked counts as success"

    await syn.backend.revoke(state.id)
    # After a restart the value of a deleted token is known nowhere but in the Secret.
    with pytest.raises(TokenNotFound, match="Secret"):
        await syn.restarted().unrevoke(state.id)


async def test_expiry_is_honoured_by_synapse(syn: Harness) -> None:
    token = generate_token()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    state = await syn.backend.issue(token, usage_limit=1, expires_at=soon)
    assert state.valid is True
    await asyncio.sleep(2)
    read = await syn.backend.read(state.id)
    assert read is not None
    assert (read.valid, read.expired(dt.datetime.now(dt.UTC))) == (False, True)
    refused = syn.synapse.register(token.get_secret_value())
    assert (refused.ok, refused.stage, refused.errcode) == (False, "token", "M_UNAUTHORIZED")


# --- errors -----------------------------------------------------------------------------------


async def test_a_wrong_admin_token_is_an_auth_error(syn: Harness) -> None:
    client = SynapseAdminClient(syn.http, syn.synapse.url, SecretStr("syt_not_a_real_token"))
    with pytest.raises(BackendAuthError, match="MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE") as raised:
        await SynapseTokenBackend(client).issue(generate_token(), usage_limit=1, expires_at=None)
    assert "401" in str(raised.value)
    assert "syt_not_a_real_token" not in str(raised.value)


async def test_a_rotated_admin_token_is_used_from_the_next_request(
    syn: Harness, tmp_path: Path
) -> None:
    token_file = tmp_path / "synapse-admin-token"
    token_file.write_text("syt_the_old_token")
    settings = Settings(
        backend="synapse",
        synapse_url=syn.synapse.url,
        synapse_admin_token_file=token_file,
    )
    issued = await syn.backend.issue(generate_token(), usage_limit=1, expires_at=None)
    client = SynapseAdminClient(syn.http, syn.synapse.url, settings.synapse_admin_token_value)
    with pytest.raises(BackendAuthError):
        [s async for s in SynapseTokenBackend(client).list_all()]
    token_file.write_text(syn.synapse.admin_token)  # the same client, no restart
    assert issued.id in {s.id async for s in SynapseTokenBackend(client).list_all()}


async def test_a_non_admin_token_is_an_auth_error(syn: Harness) -> None:
    invite = generate_token()
    await syn.backend.issue(invite, usage_limit=1, expires_at=None)
    password = "a-password-for-tests"
    registration = syn.synapse.register(invite.get_secret_value(), password=password)
    assert registration.ok
    assert registration.user_id
    user_token = syn.synapse.login(registration.user_id, password)

    client = SynapseAdminClient(syn.http, syn.synapse.url, SecretStr(user_token))
    with pytest.raises(BackendAuthError, match="server admin") as raised:
        [s async for s in SynapseTokenBackend(client).list_all()]
    assert "403" in str(raised.value)


async def test_a_wrong_url_is_an_environment_error(syn: Harness) -> None:
    token = SecretStr(syn.synapse.admin_token)
    client = SynapseAdminClient(syn.http, syn.synapse.url + "/nope", token)
    with pytest.raises(BackendMisdirected, match=r"404.*MATRIX_INVITE_SYNAPSE_URL") as raised:
        [s async for s in SynapseTokenBackend(client).list_all()]
    # Not the Invitation's fault: retried slowly, it heals once the URL is fixed.
    assert raised.value.needs_spec_change is False


async def test_nothing_listening_is_unavailable() -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        client = SynapseAdminClient(http, f"http://127.0.0.1:{free_port()}", SecretStr("x"))
        with pytest.raises(BackendUnavailable, match="No answer from Synapse"):
            await SynapseTokenBackend(client).read(token_id_for(generate_token()))


def mocked(handler: Callable[[httpx.Request], httpx.Response]) -> SynapseTokenBackend:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return SynapseTokenBackend(SynapseAdminClient(http, "http://synapse.test", SecretStr("adm")))


async def test_server_errors_and_rate_limits_are_unavailable() -> None:
    answers = iter([httpx.Response(502, text="bad gateway"), httpx.Response(429, json={})])
    backend = mocked(lambda _: next(answers))
    with pytest.raises(BackendUnavailable, match="502"):
        [s async for s in backend.list_all()]
    with pytest.raises(BackendUnavailable, match="429"):
        [s async for s in backend.list_all()]


async def test_timeouts_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(BackendUnavailable, match="in time"):
        [s async for s in mocked(handler).list_all()]


async def test_a_lost_create_answer_finds_the_token_that_was_created() -> None:
    token = generate_token()
    value = token.get_secret_value()
    created = {"token": value, "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": None}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(200, json=created)

    state = await mocked(handler).issue(token, usage_limit=1, expires_at=None)
    assert state.id == token_id_for(token)


async def test_error_texts_never_carry_the_token() -> None:
    token = generate_token()
    value = token.get_secret_value()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"errcode": "M_UNKNOWN", "error": f"odd token {value}"})

    with pytest.raises(BackendRejected) as raised:
        await mocked(handler).issue(token, usage_limit=1, expires_at=None)
    assert value not in str(raised.value)
    assert "<token>" in str(raised.value)


async def test_an_unexpected_shape_is_rejected_without_echoing_values() -> None:
    value = generate_token().get_secret_value()
    body = {"registration_tokens": [{"token": value, "uses_allowed": "many"}]}
    with pytest.raises(BackendRejected, match="unexpected shape") as raised:
        [s async for s in mocked(lambda _: httpx.Response(200, json=body)).list_all()]
    assert value not in str(raised.value)


async def test_an_untrusted_certificate_says_which_ca_bundle_to_set() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = httpx.ConnectError("handshake failed", request=request)
        error.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
        raise error

    with pytest.raises(BackendTlsError, match="MATRIX_INVITE_SYNAPSE_CA_BUNDLE"):
        [s async for s in mocked(handler).list_all()]
