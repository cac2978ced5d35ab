"""The global send-rate limit: one token bucket shared by every invitation mail of the process.

Committing 200 Invitations at once must not make the operator hammer the relay with 200 mails
in a few seconds: most relays answer that with 4xx deferrals, some with a temporary block of the
account. The bucket holds `burst` tokens (one by default, so mails go out evenly spaced) and
refills at `per_minute` tokens per minute.

A caller whose slot comes within `max_wait` seconds sleeps for it and sends. Anyone else gets
`MailThrottled` at once instead of a long sleep inside a handler: the Invitation then shows
`Ready=False, reason WaitingForMailSlot` while it waits, and its handler is retried after
`retry_after` seconds. That delay is the time until the caller's turn, counted behind the
callers already waiting (in the order they first asked), plus a little jitter, so that waiters
come back one by one instead of all at the moment the next slot frees up. The line only spreads
the retries; it does not reserve slots, so a waiter that never comes back costs nothing.

The bucket is in memory and per process: the limit holds for one operator replica, and after a
restart the bucket starts full again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from ..errors import MailThrottled

#: A caller not heard from for this long after its expected return is forgotten (its
#: Invitation was deleted or no longer needs a mail), so it no longer holds a place in line.
FORGET_AFTER_SECONDS = 30.0
#: Never tell a caller to come back sooner than this.
MIN_RETRY_SECONDS = 0.1
#: How a throttled Invitation's message begins; the handlers log these retries below ERROR.
WAITING_FOR_SLOT = "waiting for a free mail slot"


class MailThrottle:
    """A token bucket with a short in-place wait and an ordered list of callers told to wait."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: int = 1,
        max_wait: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive; use no throttle at all to turn it off")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute
        self.burst = burst
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        # Below zero while callers sleep for slots they have reserved.
        self._tokens = float(burst)
        self._updated = clock()
        # key -> clock time after which the caller is forgotten; insertion order is the line.
        self._waiting: dict[str, float] = {}

    @property
    def waiting(self) -> int:
        """How many callers were told to come back and have not had their turn yet."""
        self._forget_stale(self._clock())
        return len(self._waiting)

    async def acquire(self, key: str) -> None:
        """Return when `key` may send one mail, or raise `MailThrottled` to come back later."""
        delay = self.reserve(key)
        if delay > 0:
            await self._sleep(delay)

    def reserve(self, key: str) -> float:
        """Take a slot now (returns the seconds to sleep first, at most `max_wait`), or raise
        `MailThrottled`. Synchronous on purpose: no other coroutine runs in between."""
        now = self._clock()
        self._refill(now)
        self._forget_stale(now)
        # Seconds until a whole token is in the bucket (zero if there is one already).
        wait = max(0.0, (1.0 - self._tokens) * self.interval)
        if wait <= self.max_wait:
            self._tokens -= 1.0
            self._waiting.pop(key, None)
            return wait

        line = list(self._waiting)
        ahead = line.index(key) if key in self._waiting else len(line)
        # Aim at this caller's own slot, behind everyone told to wait before it, and arrive a
        # little early: up to `max_wait` early is served by sleeping in place, while arriving
        # late would leave the slot unused (the bucket holds only `burst` tokens). The jitter
        # stays within that margin, so waiters do not collide and never skip their turn.
        margin = min(self.interval, self.max_wait) / 2
        retry_after = max(
            MIN_RETRY_SECONDS,
            wait + ahead * self.interval - self.max_wait / 2 + self._jitter() * margin,
        )
        # Re-asking keeps the caller's place in line (dict order), only its deadline moves.
        self._waiting[key] = now + retry_after + max(FORGET_AFTER_SECONDS, 2 * self.interval)
        waiting = len(self._waiting)
        raise MailThrottled(
            f"{WAITING_FOR_SLOT}: the operator sends at most {self.per_minute:g} "
            f"mails per minute (MATRIX_INVITE_MAIL_RATE_PER_MINUTE) and {waiting} "
            f"invitation{'s are' if waiting != 1 else ' is'} waiting; this one's turn comes in "
            f"about {retry_after:.0f}s",
            retry_after=retry_after,
        )

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed / self.interval)
        self._updated = now

    def _forget_stale(self, now: float) -> None:
        for key, deadline in list(self._waiting.items()):
            if deadline < now:
                del self._waiting[key]
