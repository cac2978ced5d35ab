"""Stand-ins for a token backend or mailer whose configuration cannot work.

The operator keeps running with them instead of exiting into a crash loop: every Invitation
shows `Stalled` with the one sentence that says what to set, the log repeats it once per slow
retry, and fixing the configuration (a restart with the right environment) heals everything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

from pydantic import SecretStr

from .backends import AccountLookup, TokenState
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .ports import EnrollmentInvite, Invitation


class UnconfiguredBackend:
    """A `TokenBackend` that answers every call with the configuration error."""

    name = "unconfigured"

    def __init__(self, problem: ConfigurationError) -> None:
        self._message = str(problem)

    def _fail(self) -> NoReturn:
        raise ConfigurationError(self._message)

    async def issue(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        self._fail()

    async def read(self, token_id: str) -> TokenState | None:
        self._fail()

    async def list_all(self) -> AsyncIterator[TokenState]:
        self._fail()
        yield  # pragma: no cover - makes this an async generator like the real ones

    async def update(
        self, token_id: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        self._fail()

    async def revoke(self, token_id: str) -> TokenState | None:
        self._fail()

    async def unrevoke(self, token_id: str) -> TokenState:
        self._fail()

    async def find_account(
        self, email: str, *, used_at: dt.datetime | None, not_before: dt.datetime
    ) -> AccountLookup:
        self._fail()

    async def aclose(self) -> None:
        return None


class UnconfiguredMailer:
    """An `InvitationMailer` that answers every send with the configuration error."""

    def __init__(self, problem: ConfigurationError) -> None:
        self._message = str(problem)

    async def send_invitation(
        self,
        invitation: Invitation,
        *,
        token: SecretStr,
        token_state: TokenState,
        enrollment_url: SecretStr | None = None,
    ) -> None:
        raise ConfigurationError(self._message)


class UnconfiguredEnrollment:
    """An `EnrollmentInvitations` for authentik settings that cannot work (a URL without the
    token file or the flow's slug): every call answers with what to set."""

    def __init__(self, problem: ConfigurationError) -> None:
        self._message = str(problem)

    def _fail(self) -> NoReturn:
        raise ConfigurationError(self._message)

    async def named(self, name: str) -> list[EnrollmentInvite]:
        self._fail()

    async def names(self, prefix: str) -> set[str]:
        self._fail()

    async def create(
        self, name: str, *, email: str, display_name: str | None, expires: dt.datetime
    ) -> EnrollmentInvite:
        self._fail()

    async def delete(self, invite: EnrollmentInvite) -> None:
        self._fail()

    def link(self, invite: EnrollmentInvite) -> SecretStr:
        self._fail()
