"""The token store behind the operator, seen the same way for MAS and for Synapse.

Lifecycle tests that hold for both backends ask these views instead of a particular server:
what is stored for a token, whether it is revoked, one registration with it, limits changed by
an admin outside Git. MAS is the double (registrations simulated, lookups by id); Synapse is a
real homeserver (registrations through the client-server API, lookups by the token value, since
Synapse has no ids). "Revoked" means what each backend documents: MAS marks the token revoked,
Synapse deletes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from tests.doubles.mas import MasDouble
from tests.integration.outside_admin import OutsideAdmin
from tests.servers.synapse import SynapseServer


@dataclass(frozen=True)
class StoredToken:
    token: str
    usage_limit: int | None
    expires_at: dt.datetime | None
    times_used: int
    valid: bool


class TokenStore(Protocol):
    name: str
    reports_last_use: bool

    def stored(self, token_id: str, token: str) -> StoredToken | None:
        """The token as the backend holds it now; None when it holds none."""
        ...

    def revoked(self, token_id: str, token: str) -> bool:
        """Revoked as the backend documents it (MAS: marked revoked; Synapse: deleted)."""
        ...

    def use(self, token_id: str, token: str) -> None:
        """One completed registration with the token."""
        ...

    def set_limits(
        self, token_id: str, token: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> None:
        """An admin changes the token outside Git."""
        ...

    def count(self) -> int:
        """How many tokens the backend holds (the suite gives each test a clean store)."""
        ...


def _time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class MasStore:
    name = "mas"
    reports_last_use = True

    def __init__(self, mas: MasDouble, admin: OutsideAdmin) -> None:
        self.mas = mas
        self.admin = admin

    def stored(self, token_id: str, token: str) -> StoredToken | None:
        found = self.mas.token(token_id)
        if found is None:
            return None
        return StoredToken(
            token=found["token"],
            usage_limit=found["usage_limit"],
            expires_at=_time(found["expires_at"]),
            times_used=found["times_used"],
            valid=found["valid"],
        )

    def revoked(self, token_id: str, token: str) -> bool:
        found = self.mas.token(token_id)
        assert found is not None, f"MAS lost token {token_id}"
        return found["revoked_at"] is not None

    def use(self, token_id: str, token: str) -> None:
        self.mas.simulate_registration(token_id)

    def set_limits(
        self, token_id: str, token: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> None:
        self.admin.set_limits(token_id, usage_limit=usage_limit, expires_at=expires_at)

    def count(self) -> int:
        return len(self.mas.tokens())


class SynapseStore:
    name = "synapse"
    reports_last_use = False  # Synapse records no time of use

    def __init__(self, synapse: SynapseServer) -> None:
        self.synapse = synapse

    def stored(self, token_id: str, token: str) -> StoredToken | None:
        found = self.synapse.token(token)
        if found is None:
            return None
        expiry = found["expiry_time"]
        now_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
        uses_left = found["uses_allowed"] is None or (
            found["pending"] + found["completed"] < found["uses_allowed"]
        )
        return StoredToken(
            token=found["token"],
            usage_limit=found["uses_allowed"],
            expires_at=dt.datetime.fromtimestamp(expiry / 1000, dt.UTC) if expiry else None,
            times_used=found["completed"],
            valid=uses_left and (expiry is None or expiry > now_ms),
        )

    def revoked(self, token_id: str, token: str) -> bool:
        return self.synapse.token(token) is None

    def use(self, token_id: str, token: str) -> None:
        registration = self.synapse.register(token)
        assert registration.ok, f"registration with the token failed: {registration.body}"

    def set_limits(
        self, token_id: str, token: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> None:
        expiry = int(expires_at.timestamp() * 1000) if expires_at is not None else None
        self.synapse.set_token(token, uses_allowed=usage_limit, expiry_time=expiry)

    def count(self) -> int:
        return len(self.synapse.tokens())
