"""The fake token backend answers as the real one does: one script, run against both.

`FakeTokenBackend` over `MasStore` on one side; on the other the operator's own
`MasTokenBackend` and `MasAdminClient` talking HTTP to the MAS double on 127.0.0.1 (the double is
checked against MAS's spec by tests/contract). Every answer is reduced to what reconcile reads
(validity, limit, uses, expiry, revocation, which earlier token it is, or the error class); the
two transcripts must be equal. A fake that drifts from MAS's semantics fails here before it can
let a wrong reconcile pass the crash sweeps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from matrix_invite_operator.backends.mas import MasAdminClient, MasTokenBackend
from matrix_invite_operator.backends.oauth import ClientCredentialsAuth
from pydantic import SecretStr

from tests.doubles.mas import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, MasDouble

from .subject import OperatorError, TokenBackend, TokenState
from .world import START, World

UNKNOWN = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # a ULID no store holds
WEEK, DAYS_3 = START + dt.timedelta(days=7), START + dt.timedelta(days=3)


async def script(backend: TokenBackend) -> list[Any]:
    """What reconcile and finalize ask of a backend, including every answer that is not 2xx."""
    ids: list[str] = []

    def seen(state: TokenState | None) -> Any:
        if state is None:
            return None
        if state.id not in ids:
            ids.append(state.id)
        return (
            f"token #{ids.index(state.id)}",
            state.valid,
            state.usage_limit,
            state.times_used,
            state.expires_at,
            state.revoked,
        )

    async def step(call: Callable[[], Awaitable[TokenState | None]]) -> Any:
        try:
            return seen(await call())
        except OperatorError as exc:
            return type(exc).__name__

    one, two, three = SecretStr("Fidelity-One-1"), SecretStr("Fidelity-Two-2"), SecretStr("x3")
    transcript = [
        await step(lambda: backend.issue(one, usage_limit=1, expires_at=WEEK)),
        await step(lambda: backend.issue(one, usage_limit=1, expires_at=WEEK)),  # 409: find it
        await step(lambda: backend.read(ids[0])),
        await step(lambda: backend.read(UNKNOWN)),
        await step(lambda: backend.update(ids[0], usage_limit=3, expires_at=DAYS_3)),
        await step(lambda: backend.update(ids[0], usage_limit=None, expires_at=None)),
        await step(lambda: backend.revoke(ids[0])),
        await step(lambda: backend.revoke(ids[0])),  # 400: already revoked
        await step(lambda: backend.unrevoke(ids[0])),
        await step(lambda: backend.unrevoke(ids[0])),  # 400: not revoked
        await step(lambda: backend.update(UNKNOWN, usage_limit=1, expires_at=WEEK)),
        await step(lambda: backend.revoke(UNKNOWN)),
        await step(lambda: backend.unrevoke(UNKNOWN)),
        await step(lambda: backend.issue(two, usage_limit=0, expires_at=None)),  # invalid at once
        await step(lambda: backend.issue(three, usage_limit=None, expires_at=START)),  # expired
    ]
    listed = [seen(state) async for state in backend.list_all()]
    return [*transcript, ("listing", *listed)]


async def test_the_fake_backend_answers_as_mas_through_the_real_client() -> None:
    world = World()
    fake = await script(world.restart().backend)

    with MasDouble() as double:
        double.set_clock(START)
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0)) as http:
            auth = ClientCredentialsAuth(
                DEFAULT_CLIENT_ID, SecretStr(DEFAULT_CLIENT_SECRET), issuer=double.url
            )
            real = await script(MasTokenBackend(MasAdminClient(http, double.url, auth=auth)))

    assert fake == real
    assert fake[1] == fake[0], "a second issue of one value must find the first token"
    assert len(fake[-1]) == 4, "the listing shows the three tokens"
