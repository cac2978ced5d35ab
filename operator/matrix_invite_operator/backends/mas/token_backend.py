"""`MasTokenBackend`: the `TokenBackend` over `MasAdminClient`, safe to repeat.

It absorbs MAS's non-idempotent corners: 409 (or 500) on a repeated create, 400 on a repeated
revoke or unrevoke.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import AsyncIterator

from pydantic import SecretStr

from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.backends.mas.client import MasAdminClient
from matrix_invite_operator.backends.mas.errors import MasUnavailable
from matrix_invite_operator.errors import (
    BackendRejected,
    BackendUnavailable,
    OperatorError,
    TokenConflict,
    TokenNotFound,
)


class MasTokenBackend:
    """`TokenBackend` over MAS: every method is safe to repeat."""

    name = "MAS"

    def __init__(self, client: MasAdminClient, *, page_size: int = 100) -> None:
        self._client = client
        self._page_size = page_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r})"

    async def issue(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        try:
            created = await self._client.create_token(
                token, usage_limit=usage_limit, expires_at=expires_at
            )
        except TokenConflict as conflict:
            existing = await self._find_by_value(token)
            if existing is None:
                raise BackendUnavailable(
                    "MAS reported the token as existing but it is not in the token list yet",
                    retry_after=5.0,
                ) from conflict
            return existing
        except MasUnavailable as failure:
            # A lost answer, or MAS's 500 for two simultaneous creates of one value, may hide
            # a token that now exists; a 429 or 503 does not (MAS asked for less load, and
            # gets none). A token the create made is among the newest: one page of them is
            # read. Not there, the retry's create answers 409 if it exists after all.
            if not failure.may_have_taken_effect:
                raise
            try:
                existing = await self._find_by_value(token, pages=1)
            except OperatorError:
                raise failure  # noqa: B904 - the create failure is the one worth reporting
            if existing is None:
                raise
            return existing
        return created.to_state()

    async def read(self, token_id: str) -> TokenState | None:
        try:
            return (await self._client.get_token(token_id)).to_state()
        except TokenNotFound:
            return None

    async def list_all(self) -> AsyncIterator[TokenState]:
        async for token in self._client.list_tokens(page_size=self._page_size):
            yield token.to_state()

    async def list_newest(self, count: int) -> list[TokenState]:
        """One request: the first page of `newest_tokens`, never the one before it."""
        newest: list[TokenState] = []
        tokens = self._client.newest_tokens(page_size=count)
        try:
            async for token in tokens:
                newest.append(token.to_state())
                if len(newest) >= count:
                    break
        finally:
            await tokens.aclose()
        return newest

    async def update(
        self, token_id: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        updated = await self._client.update_token(
            token_id, usage_limit=usage_limit, expires_at=expires_at
        )
        return updated.to_state()

    async def revoke(self, token_id: str) -> TokenState | None:
        try:
            return (await self._client.revoke_token(token_id)).to_state()
        except TokenNotFound:
            return None
        except BackendRejected:
            # MAS answers 400 to revoking a revoked token; that is the state we wanted.
            current = await self.read(token_id)
            if current is None:
                return None
            if current.revoked:
                return current
            raise

    async def unrevoke(self, token_id: str) -> TokenState:
        try:
            return (await self._client.unrevoke_token(token_id)).to_state()
        except BackendRejected:
            current = await self.read(token_id)
            if current is None:
                raise TokenNotFound(f"MAS has no registration token with id {token_id}") from None
            if not current.revoked:
                return current
            raise

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""

    async def _find_by_value(
        self, token: SecretStr, *, pages: int | None = None
    ) -> TokenState | None:
        """The token holding this value, newest first (ours was created a moment ago); at most
        `pages` pages of them (None: all, for a 409 that says it exists)."""
        wanted = token.get_secret_value().encode()
        limit = None if pages is None else pages * self._page_size
        seen = 0
        async with contextlib.aclosing(self._client.newest_tokens(self._page_size)) as newest:
            async for candidate in newest:
                value = candidate.attributes.token.get_secret_value().encode()
                if secrets.compare_digest(value, wanted):
                    return candidate.to_state()
                seen += 1
                if limit is not None and seen >= limit:
                    break
        return None
