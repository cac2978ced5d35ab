"""`MasAccounts`: who signed up with an invited address, as far as MAS can tell.

MAS does not say which account a token created: the account holding the invited address whose
creation is within seconds of the token's last use is the one (FACTS, "Who used a token").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from matrix_invite_operator.backends import AccountLookup
from matrix_invite_operator.backends.mas.client import MasAdminClient, mas_time
from matrix_invite_operator.backends.mas.models import UserEmail

# A token's last use and the account's creation differ by about a millisecond (FACTS); seconds
# leave room for a slow database without matching a sign-up from another day.
ACCOUNT_MATCH_TOLERANCE = dt.timedelta(seconds=30)


class MasAccounts:
    """The `AccountFinder` over MAS's Admin API."""

    def __init__(
        self,
        client: MasAdminClient,
        *,
        server_name: Callable[[], str],
        match_tolerance: dt.timedelta = ACCOUNT_MATCH_TOLERANCE,
    ) -> None:
        self._client = client
        # Matrix IDs need it; it may come from MAS's site-config, read after startup.
        self._server_name = server_name
        self._tolerance = match_tolerance

    async def find_account(
        self, email: str, *, used_at: dt.datetime | None, not_before: dt.datetime
    ) -> AccountLookup:
        """MAS does not say which account a token created: the account holding the invited
        address whose creation is within seconds of the token's last use (FACTS, "Who used a
        token"). One request for the address, one per owner (an address has at most one)."""
        records = [r for r in await self._client.user_emails(email) if _same_address(r, email)]
        if not records:
            return AccountLookup(None, f"no account in MAS holds the address {email}")
        for record in records:
            user = await self._client.get_user(record.attributes.user_id)
            user_id = f"@{user.attributes.username}:{self._server_name()}"
            created = user.attributes.created_at
            if used_at is not None and abs(created - used_at) <= self._tolerance:
                return AccountLookup(user_id, f"{user_id} signed up with {email}")
            if used_at is None and created >= not_before:
                return AccountLookup(user_id, f"{user_id} signed up with {email}")
        return AccountLookup(
            None,
            f"{email} belongs to {user_id}, created at {mas_time(created)}, not when the token "
            f"was used ({mas_time(used_at) if used_at else 'unknown'}): someone else signed up",
        )


def _same_address(record: UserEmail, email: str) -> bool:
    # MAS matches the filter ignoring case; so do we, and nothing looser.
    return record.attributes.email.casefold() == email.casefold()
