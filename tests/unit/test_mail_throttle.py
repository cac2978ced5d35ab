"""The global send-rate limit, driven by an injected clock: no sleeping, no flakiness."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq

import pytest
from matrix_invite_operator.errors import MailError, MailThrottled, TransientError
from matrix_invite_operator.handlers import _retry_delay
from matrix_invite_operator.mail.throttle import FORGET_AFTER_SECONDS, MailThrottle
from matrix_invite_operator.models import InvitationSpec, InvitationStatus, Phase
from matrix_invite_operator.runtime import build_mailer
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.status import Problem, compute_status


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def throttle(
    clock: FakeClock, per_minute: float = 30, *, burst: int = 1, jitter: float = 0.0
) -> MailThrottle:
    return MailThrottle(
        per_minute, burst=burst, max_wait=2.0, clock=clock, sleep=clock.sleep, jitter=lambda: jitter
    )


def throttled(bucket: MailThrottle, key: str) -> MailThrottled:
    with pytest.raises(MailThrottled) as info:
        bucket.reserve(key)
    return info.value


def test_first_mail_goes_at_once_the_next_waits_in_place_then_callers_are_told_to_come_back() -> (
    None
):
    clock = FakeClock()
    bucket = throttle(clock, per_minute=30)  # one slot every 2 s

    assert bucket.reserve("a") == 0.0
    assert bucket.reserve("b") == pytest.approx(2.0)  # within max_wait: sleeps for its slot
    error = throttled(bucket, "c")  # its slot is 4 s away: longer than max_wait

    # Back a second early (half of max_wait): then it sleeps in place for its slot.
    assert error.retry_after == pytest.approx(3.0)
    assert bucket.waiting == 1
    clock.now += error.retry_after
    assert bucket.reserve("c") == pytest.approx(1.0)
    assert bucket.waiting == 0


def test_acquire_sleeps_only_for_a_short_wait() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=60)  # one slot per second

    asyncio.run(bucket.acquire("a"))
    asyncio.run(bucket.acquire("b"))
    asyncio.run(bucket.acquire("c"))  # the clock moved on while "b" slept

    assert clock.slept == [pytest.approx(1.0), pytest.approx(1.0)]


def test_the_bucket_refills_at_the_rate_and_never_above_the_burst() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=6, burst=3)  # one slot every 10 s

    assert [bucket.reserve(k) for k in "abc"] == [0.0, 0.0, 0.0]
    throttled(bucket, "d")
    clock.now += 10
    assert bucket.reserve("d") == 0.0
    clock.now += 3600  # a long quiet hour buys three slots, not 360
    assert [bucket.reserve(k) for k in "efg"] == [0.0, 0.0, 0.0]
    throttled(bucket, "h")


def test_waiters_are_spread_one_slot_apart_in_the_order_they_first_asked() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=30, jitter=0.5)  # jitter adds a quarter of max_wait
    bucket.reserve("first")
    bucket.reserve("second")

    retries = [throttled(bucket, key).retry_after for key in ("x", "y", "z")]

    # Slots at 4, 6 and 8 s; each aimed at one second early, plus 0.5 s of jitter.
    assert retries == [pytest.approx(3.5), pytest.approx(5.5), pytest.approx(7.5)]
    # Asking again early keeps one's place in line; a newcomer queues behind everyone.
    clock.now += 1
    assert throttled(bucket, "y").retry_after == pytest.approx(4.5)
    assert throttled(bucket, "new").retry_after == pytest.approx(8.5)
    assert bucket.waiting == 4


def test_jitter_never_reaches_the_next_waiters_slot() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=30, jitter=0.999)
    bucket.reserve("first")
    bucket.reserve("second")

    x, y = throttled(bucket, "x").retry_after, throttled(bucket, "y").retry_after

    # Slots at 4 and 6 s: each waiter arrives within max_wait (2 s) before its own slot.
    assert 2.0 <= x <= 4.0
    assert 4.0 <= y <= 6.0
    assert y - x == pytest.approx(2.0)


def test_a_waiter_that_gets_its_slot_leaves_the_line() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=30)
    bucket.reserve("first")
    bucket.reserve("second")
    throttled(bucket, "x")
    throttled(bucket, "y")

    clock.now += 4
    assert bucket.reserve("x") == 0.0
    assert bucket.waiting == 1
    # The line spreads retries, it does not reserve: with "y" not back yet, a newcomer whose
    # slot is near sleeps for it rather than leave it unused.
    assert bucket.reserve("z") == pytest.approx(2.0)
    assert throttled(bucket, "y").retry_after == pytest.approx(3.0)


def test_a_slow_rate_tells_waiters_to_come_back_much_later() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=2)  # one slot every 30 s
    bucket.reserve("first")

    assert throttled(bucket, "x").retry_after == pytest.approx(29.0)
    assert throttled(bucket, "y").retry_after == pytest.approx(59.0)


def test_a_waiter_that_never_comes_back_is_forgotten() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=30)
    bucket.reserve("first")
    bucket.reserve("second")
    gone = throttled(bucket, "deleted-invitation").retry_after
    assert throttled(bucket, "x").retry_after == pytest.approx(gone + 2)

    clock.now += gone + 2 + FORGET_AFTER_SECONDS + 1

    assert bucket.waiting == 0


@pytest.mark.parametrize("retry_max", [None, 5.0])
def test_many_waiters_respect_the_rate_in_every_minute_and_all_get_their_turn(
    retry_max: float | None,
) -> None:
    """200 Invitations committed at once, each retried when told (or earlier, when the
    operator's retry_max_seconds caps the delay): what the relay sees."""
    clock = FakeClock()
    start = clock.now
    bucket = throttle(clock, per_minute=30, jitter=0.3)
    due = [(start, f"inv-{i:03d}") for i in range(200)]
    heapq.heapify(due)
    sent: list[float] = []
    attempts = 0
    while due:
        clock.now, key = heapq.heappop(due)
        attempts += 1
        try:
            delay = bucket.reserve(key)
        except MailThrottled as exc:
            delay = exc.retry_after if retry_max is None else min(exc.retry_after, retry_max)
            heapq.heappush(due, (clock.now + delay, key))
        else:
            sent.append(clock.now + delay)

    sent.sort()
    assert len(sent) == 200
    for i, moment in enumerate(sent):
        in_window = sum(1 for other in sent[i:] if other < moment + 60)
        assert in_window <= 30
    # Evenly spaced: 199 gaps of 2 s, no slot left unused, and no thundering herd of retries.
    assert sent[-1] - start == pytest.approx(398, abs=2)
    if retry_max is None:
        assert attempts <= 2 * 200


def test_throttled_is_a_transient_mail_error_and_names_the_setting() -> None:
    clock = FakeClock()
    bucket = throttle(clock, per_minute=30)
    bucket.reserve("a")
    bucket.reserve("b")

    error = throttled(bucket, "c")

    assert isinstance(error, MailError)
    assert isinstance(error, TransientError)
    assert "MATRIX_INVITE_MAIL_RATE_PER_MINUTE" in str(error)
    assert "at most 30 mails per minute" in str(error)
    assert "1 invitation is waiting" in str(error)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"per_minute": 0}, "positive"), ({"burst": 0}, "burst"), ({"max_wait": -1}, "max_wait")],
)
def test_nonsense_parameters_are_refused(kwargs: dict[str, float], match: str) -> None:
    arguments: dict[str, float] = {"per_minute": 30, **kwargs}
    per_minute = arguments.pop("per_minute")
    with pytest.raises(ValueError, match=match):
        MailThrottle(per_minute, **arguments)  # type: ignore[arg-type]


def test_waiting_invitation_shows_pending_with_reason_waiting_for_mail_slot() -> None:
    problem = Problem.of(MailThrottled("waiting for a free mail slot", retry_after=4), "MAS")
    status = compute_status(
        InvitationStatus(),
        spec=InvitationSpec(email="ada@example.org"),
        generation=1,
        token=None,
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        reconciling=problem,
    )

    assert problem.reason == "WaitingForMailSlot"
    assert status.phase is Phase.PENDING
    ready, reconciling, stalled = (status.condition(t) for t in ("Ready", "Reconciling", "Stalled"))
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "WaitingForMailSlot")
    assert reconciling is not None
    assert (reconciling.status, reconciling.reason) == ("True", "WaitingForMailSlot")
    assert stalled is not None
    assert stalled.status == "False"


def test_throttled_retries_come_back_at_their_turn_without_backoff() -> None:
    settings = Settings(retry_base_seconds=5, retry_max_seconds=300)

    assert _retry_delay(settings, 8, MailThrottled("wait", retry_after=3.5)) == 3.5
    assert _retry_delay(settings, 0, MailThrottled("wait", retry_after=900)) == 300


def test_the_rate_setting_defaults_to_30_and_0_turns_it_off() -> None:
    default = build_mailer(Settings())
    off = build_mailer(Settings(mail_rate_per_minute=0))

    assert default.throttle is not None
    assert default.throttle.per_minute == 30
    assert off.throttle is None
