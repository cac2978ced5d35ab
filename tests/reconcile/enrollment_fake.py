"""authentik's invitations in the fast layer: what authentik keeps, and the operator's client of
it over the `Wire` (each request counted, crashed in before and after it took effect, its
answer lost in turn).

Semantics as in `tests/doubles/authentik.py` (and FACTS.md): names are not unique (a second
create of a name is a second invitation), a delete of one that is gone counts as done, the key
(pk) is the link's secret. A lost answer becomes the client's `AuthentikUnavailable`, with
`may_have_taken_effect` for a create, as `authentik.AuthentikClient` raises it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pydantic import SecretStr

from .subject import AuthentikUnavailable, EnrollmentInvite
from .world import FakeClock, Ledger, LostAnswer, Wire

LINK = "https://auth.example.org/if/flow/matrix-invitation/?itoken="


@dataclasses.dataclass
class StoredInvite:
    pk: str
    name: str
    email: str
    expires: dt.datetime

    def invite(self) -> EnrollmentInvite:
        return EnrollmentInvite(SecretStr(self.pk), self.name, self.email, self.expires)


class AuthentikStore:
    """authentik's side: what outlives an operator process."""

    def __init__(self, ledger: Ledger, clock: FakeClock) -> None:
        self._ledger = ledger
        self._clock = clock
        self.invites: dict[str, StoredInvite] = {}
        self.ever: set[str] = set()  # every key handed out (the leak scan looks for them)

    def create(self, name: str, email: str, expires: dt.datetime) -> StoredInvite:
        pk = f"7f3c0000-0000-4000-8000-{len(self.ever) + 1:012d}"
        self.ever.add(pk)
        stored = StoredInvite(pk, name, email, expires)
        self.invites[pk] = stored
        self._ledger.bump()
        return stored

    def named(self, name: str) -> list[StoredInvite]:
        return [dataclasses.replace(i) for i in self.invites.values() if i.name == name]

    def delete(self, pk: str) -> None:
        if self.invites.pop(pk, None) is not None:
            self._ledger.bump()

    def open(self, pk: str) -> None:
        """The invitee opens the link: a single-use invitation is deleted there."""
        self.delete(pk)


class FakeEnrollment:
    """The operator's client of authentik (`ports.EnrollmentInvitations`), over the wire."""

    def __init__(self, store: AuthentikStore, wire: Wire) -> None:
        self._store = store
        self._wire = wire

    async def named(self, name: str) -> list[EnrollmentInvite]:
        try:
            found = await self._wire.call(
                "Authentik GET invitations?name", lambda: self._store.named(name)
            )
        except LostAnswer as lost:
            raise AuthentikUnavailable(str(lost)) from None
        return [i.invite() for i in found]

    async def names(self, prefix: str) -> set[str]:
        def listed() -> set[str]:
            return {i.name for i in self._store.invites.values() if i.name.startswith(prefix)}

        try:
            return await self._wire.call("Authentik GET invitations?search", listed)
        except LostAnswer as lost:
            raise AuthentikUnavailable(str(lost)) from None

    async def create(
        self, name: str, *, email: str, display_name: str | None, expires: dt.datetime
    ) -> EnrollmentInvite:
        try:
            stored = await self._wire.call(
                "Authentik POST invitations", lambda: self._store.create(name, email, expires)
            )
        except LostAnswer as lost:
            raise AuthentikUnavailable(str(lost), may_have_taken_effect=True) from None
        return stored.invite()

    async def delete(self, invite: EnrollmentInvite) -> None:
        pk = invite.key.get_secret_value()
        try:
            await self._wire.call("Authentik DELETE invitation", lambda: self._store.delete(pk))
        except LostAnswer as lost:
            raise AuthentikUnavailable(str(lost)) from None

    def link(self, invite: EnrollmentInvite) -> SecretStr:
        return SecretStr(LINK + invite.key.get_secret_value())
