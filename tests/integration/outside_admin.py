"""An admin changing MAS behind the operator's back, through MAS's own Admin API.

Drift tests need changes made outside Git; this client makes them over HTTP like a real admin
tool would, rather than by poking the double's memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from matrix_invite_operator.backends.mas import MasAdminClient, RegistrationToken
from matrix_invite_operator.backends.oauth import ClientCredentialsAuth
from pydantic import SecretStr

T = TypeVar("T")


class OutsideAdmin:
    def __init__(self, mas_url: str, client_id: str, client_secret: str) -> None:
        self.mas_url = mas_url
        self.client_id = client_id
        self.client_secret = client_secret

    def _call(self, action: Callable[[MasAdminClient], Awaitable[T]]) -> T:
        async def run() -> T:
            auth = ClientCredentialsAuth(
                self.client_id, SecretStr(self.client_secret), issuer=self.mas_url
            )
            async with httpx.AsyncClient(timeout=10) as http:
                return await action(MasAdminClient(http, self.mas_url, auth=auth))

        return asyncio.run(run())

    def set_limits(
        self, token_id: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> RegistrationToken:
        return self._call(
            lambda c: c.update_token(token_id, usage_limit=usage_limit, expires_at=expires_at)
        )

    def revoke(self, token_id: str) -> RegistrationToken:
        return self._call(lambda c: c.revoke_token(token_id))
