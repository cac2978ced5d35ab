"""The token backend interface: what the reconciler needs from a homeserver's token store.

A backend issues, reads, lists, updates, revokes and un-revokes registration tokens. Finding
the account a used token created is a capability of its own (`AccountFinder`: neither store
links the two), which onboarding asks. The reconciler only sees `TokenBackend` and
`TokenState`; the implementations are MAS (`backends.mas`) and Synapse's admin API
(`backends.synapse`), and a provider (`providers/`) builds one. Token values travel as
`SecretStr` so that no repr or log line shows them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, SecretStr


class TokenState(BaseModel):
    """A backend-neutral snapshot of one registration token, as the backend holds it now."""

    model_config = ConfigDict(frozen=True)

    id: str
    token: SecretStr
    valid: bool
    usage_limit: int | None
    times_used: int
    pending: int | None = None
    created_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class AccountLookup:
    """Who signed up with an address: a Matrix ID, or None with a sentence saying why not."""

    user_id: str | None
    reason: str


class TokenBackend(Protocol):
    """What the reconciler may ask of a token store. Every method is safe to repeat."""

    @property
    def name(self) -> str:
        """The store's name for Events and messages: "MAS", "Synapse"."""
        ...

    async def issue(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        """Create a token with exactly this value; if it already exists, return the existing one."""
        ...

    async def read(self, token_id: str) -> TokenState | None:
        """The token with this id, or None when the backend does not know it."""
        ...

    def list_all(self) -> AsyncIterator[TokenState]:
        """Every token the backend holds, page by page."""
        ...

    async def update(
        self, token_id: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        """Set the usage limit and expiry (None clears them). Raises TokenNotFound."""
        ...

    async def revoke(self, token_id: str) -> TokenState | None:
        """Revoke; already revoked counts as success; None when the token is unknown."""
        ...

    async def unrevoke(self, token_id: str) -> TokenState:
        """Undo a revocation; not revoked counts as success. Raises TokenNotFound."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds (it does not own the shared HTTP client)."""
        ...


class AccountFinder(Protocol):
    """Who signed up with an address: each backend's own lookup (a few requests at most)."""

    async def find_account(
        self, email: str, *, used_at: dt.datetime | None, not_before: dt.datetime
    ) -> AccountLookup:
        """The account that signed up with `email` around `used_at` (the token's last use)
        and not before `not_before` (the Invitation's creation)."""
        ...


@runtime_checkable
class ListsNewest(Protocol):
    """A backend that can list its newest tokens in one request (MAS pages from the end).

    The sync loop's acceptance pass asks for these often; a backend without it (Synapse lists
    every token in one answer, so "the newest" costs as much as all) is left to the full pass.
    """

    async def list_newest(self, count: int) -> list[TokenState]:
        """The `count` most recently created tokens (fewer if there are not as many)."""
        ...
