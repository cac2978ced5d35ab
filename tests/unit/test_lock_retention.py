"""The per-Invitation lock is kept only while someone holds or waits for it (issue 24).

Before, `Dependencies.locks` kept one lock for every Invitation ever handled, for the life of
the process: memory that grows with every Invitation and is never given back.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.runtime import Dependencies
from matrix_invite_operator.settings import Settings


def invitation(name: str) -> Invitation:
    return Invitation.from_body(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": "2026-12-06T00:00:00Z",
            },
            "spec": {"email": f"{name}@example.org"},
        }
    )


def dependencies() -> Dependencies:
    unused = cast(Any, None)  # lock_for touches none of the clients
    return Dependencies(
        settings=Settings(), backend=unused, kube=unused, mailer=unused, events=unused
    )


async def test_one_lock_while_held_none_kept_after() -> None:
    deps = dependencies()
    ada, bob = invitation("ada"), invitation("bob")
    held = deps.lock_for(ada)
    async with held:
        # Whoever asks meanwhile gets the same lock, and sees it taken.
        assert deps.lock_for(ada) is held
        assert deps.lock_for(ada).locked()
        assert deps.lock_for(bob) is not held
        waiter = asyncio.create_task(_take(deps, ada))
        await asyncio.sleep(0)
        assert not waiter.done()  # serialised: it waits for the holder
    await waiter
    assert deps.lock_for(ada) is held  # still referenced here: still the one lock
    del held
    assert len(deps.locks) == 0


async def _take(deps: Dependencies, one: Invitation) -> None:
    async with deps.lock_for(one):
        pass
