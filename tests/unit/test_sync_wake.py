"""The sync loop wakes for an Invitation's expiry without scanning every Invitation per event."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.formats import rfc3339
from matrix_invite_operator.runtime import Dependencies
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.sync import Registry, StatusSync, WatchedInvitation, expires_before

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def body(name: str, expires: dt.datetime | None, **status: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"phase": "Sent", "expired": False, **status}
    if expires is not None:
        fields["expiresAt"] = rfc3339(expires)
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {}, "status": fields}


def watched(name: str, expires: dt.datetime | None, **status: Any) -> WatchedInvitation:
    return WatchedInvitation.from_body(body(name, expires, **status))


def test_only_an_expiry_before_the_planned_wake_up_wakes() -> None:
    wake_at = NOW + dt.timedelta(seconds=60)
    assert expires_before(watched("soon", NOW + dt.timedelta(seconds=10)), wake_at)
    assert expires_before(watched("due", NOW - dt.timedelta(seconds=10)), wake_at)
    assert not expires_before(watched("later", NOW + dt.timedelta(days=7)), wake_at)
    assert not expires_before(watched("none", None), wake_at)
    assert not expires_before(watched("flipped", NOW, expired=True), wake_at)
    assert not expires_before(watched("pending", NOW, phase="Pending"), wake_at)


class _NoTokens:
    listings = 0

    async def list_all(self) -> AsyncIterator[TokenState]:
        self.listings += 1
        for _ in ():
            yield _


async def passes(sync: StatusSync, n: int) -> None:
    for _ in range(200):
        if sync.passes >= n:
            return
        await asyncio.sleep(0.01)


async def test_the_loop_wakes_for_a_due_invitation_not_for_a_later_one() -> None:
    backend = _NoTokens()
    # The loop reads only these four; the pass below does no other I/O.
    deps = cast(
        Dependencies,
        SimpleNamespace(
            settings=Settings(sync_interval_seconds=3600),
            backend=backend,
            clock=lambda: dt.datetime.now(dt.UTC),
            enrollment=None,  # no authentik: nothing more to list
        ),
    )
    registry: Registry = {}
    sync = StatusSync(deps, registry)
    task = asyncio.create_task(sync.run_forever())
    try:
        await passes(sync, 1)  # the first pass lists MAS, then the loop sleeps for an hour
        await asyncio.sleep(0.05)

        later = watched("later", dt.datetime.now(dt.UTC) + dt.timedelta(days=7))
        registry[("ns", "later")] = later
        sync.wake(later)
        await asyncio.sleep(0.2)
        assert sync.passes == 1

        due_body = body("due", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        due_body["metadata"]["deletionTimestamp"] = rfc3339(NOW)  # the pass skips it, no I/O
        due = WatchedInvitation.from_body(due_body)
        registry[("ns", "due")] = due
        sync.wake(due)
        await passes(sync, 2)
        assert sync.passes == 2, "a due Invitation must wake the loop for a pass"
        assert backend.listings == 1, "an expiry wake-up uses the last listing"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
