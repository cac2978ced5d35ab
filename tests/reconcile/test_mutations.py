"""The fast layer fails when the code it guards is wrong: sabotaged fakes and steps must be caught.

A fake a wrong reconcile could pass with is a defect; each test here breaks one promise on
purpose and expects the sweep to report it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from .harness import run, sweep
from .scenarios import SCENARIOS
from .subject import StatusSync, TokenState, handlers, kopf_body, reconcile_module
from .world import CrashPlan, FakeTokenBackend, World

SCENARIO = {s.name: s for s in SCENARIOS}


class SecondTokenOnConflict(FakeTokenBackend):
    """Answers MAS's 409 by creating another token with a fresh value instead of finding it."""

    async def on_conflict(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        fresh = SecretStr(token.get_secret_value()[::-1] + "x")
        return await self.issue(fresh, usage_limit=usage_limit, expires_at=expires_at)


class BlindListing(FakeTokenBackend):
    """Lists no tokens at all: a token whose id was never recorded cannot be found."""

    async def list_all(self) -> AsyncIterator[TokenState]:
        async for state in super().list_all():
            if state is None:  # never: the listing is dropped, its requests still made
                yield state


def test_a_second_token_on_conflict_is_caught() -> None:
    result = asyncio.run(sweep(SCENARIO["create"], backend=SecondTokenOnConflict))
    failures = "\n".join(result.failures)
    # Only a crash after MAS created the token (its answer lost) leads to the 409.
    assert "MAS POST /user-registration-tokens" in failures
    assert "Secret and MAS token disagree" in failures or "orphan" in failures
    assert "tokens in MAS, not one" in failures


def test_a_token_left_behind_by_finalize_is_caught() -> None:
    result = asyncio.run(sweep(SCENARIO["delete, token id never recorded"], backend=BlindListing))
    assert any("still valid after the deletion" in f for f in result.failures)
    assert any("orphan: valid MAS token" in f for f in result.failures)


def _mail_point() -> CrashPlan:
    clean = asyncio.run(run(SCENARIO["create"], None))
    index = next(p.index for p in clean.points if p.call == "SMTP DATA")
    return CrashPlan(index, after_effect=True)


def test_a_second_mail_counts_only_inside_the_documented_window() -> None:
    plan = _mail_point()
    inside = asyncio.run(run(SCENARIO["create"], plan))
    assert (inside.duplicate_mails, inside.problems) == (1, [])
    denied = asyncio.run(run(SCENARIO["create"], plan, crash_window=False))
    assert any("mails outside the crash window" in p for p in denied.problems)


def test_a_step_that_forgets_the_secret_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconcile that issues a fresh value on each run instead of the Secret's: harmless
    without a crash, a second valid token after a crash between the issue and its record."""

    async def forgetful(deps: object, invitation: object, writer: object) -> SecretStr:
        return reconcile_module.generate_token()

    monkeypatch.setattr(reconcile_module, "_ensure_secret", forgetful)
    clean = asyncio.run(run(SCENARIO["create"], None))
    issue = next(p.index for p in clean.points if p.call == "MAS POST /user-registration-tokens")
    crashed = asyncio.run(run(SCENARIO["create"], CrashPlan(issue, after_effect=True)))
    assert any("orphan" in p for p in crashed.problems), crashed.problems


def test_a_world_without_a_crash_is_clean() -> None:
    """The baseline the mutations are measured against."""
    assert asyncio.run(run(SCENARIO["create"], None)).problems == []
    assert World().mas.tokens == {}


def _no_lagging_converged(self: StatusSync, watched: object) -> int:
    return 0


def test_an_edit_reverted_during_an_outage_is_handled_without_the_sync_pass_backstop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kopf's diff base was the spec it last handled: an edit reverted while its retry waited
    left nothing to handle, and only the sync pass's `converge_lagging` reconciled the newest
    generation. Derived from status (handlers.HandledChanges), the newer generation is a change
    of its own; `converge_lagging` stays, as a backstop."""

    monkeypatch.setattr(StatusSync, "converge_lagging", _no_lagging_converged)
    outcome = asyncio.run(run(SCENARIO["edit reverted during an outage"], None))
    assert outcome.problems == []


def test_a_diff_base_that_ignores_the_generation_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settled status taken as handled whatever the spec's generation: no handler sees an
    edit, and (without the sync pass's backstop) nothing reconciles it."""
    per_status = handlers.handled_per_status

    def any_generation(body: Any) -> bool:
        status = body.get("status") or {}
        moved = {**body, "status": {**status, "observedGeneration": body["metadata"]["generation"]}}
        return per_status(kopf_body(moved)) if status.get("observedGeneration") else False

    monkeypatch.setattr(handlers, "handled_per_status", any_generation)
    monkeypatch.setattr(StatusSync, "converge_lagging", _no_lagging_converged)
    outcome = asyncio.run(run(SCENARIO["edit usage limit"], None))
    assert outcome.problems, "an edit no handler saw went unnoticed"


ONBOARDED = SCENARIO["create with an account and rooms"]


def test_a_crash_while_onboarding_after_the_mail_mails_no_one_twice() -> None:
    """spec.account makes onboarding due on the first run, right after the mail: a crash at any
    of its requests (a session, a join, the notice) must find the mail recorded (issue 21, 1)."""
    clean = asyncio.run(run(ONBOARDED, None))
    mail = next(p.index for p in clean.points if p.call == "SMTP DATA")
    onboarding = [p for p in clean.points if p.step == "onboard"]
    assert onboarding, "onboarding made no request: nothing was tested"
    assert all(p.index > mail for p in onboarding)
    for point in onboarding:
        for after in (False, True):
            outcome = asyncio.run(run(ONBOARDED, CrashPlan(point.index, after_effect=after)))
            assert (outcome.duplicate_mails, outcome.problems) == (0, []), outcome.label


def test_onboarding_between_the_mail_and_its_record_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order before the fix: mail, onboarding's requests, then the record. A crash in
    between is outside the documented window, so the second mail it causes is reported."""
    mail_if_due, onboard = reconcile_module._mail_if_due, reconcile_module.onboard

    async def onboarding_first(deps: Any, invitation: Any, writer: Any, *rest: Any) -> Any:
        mailed = await mail_if_due(deps, invitation, writer, *rest)
        await onboard(deps, invitation, writer, rest[-1])  # staged, written only after
        return mailed

    monkeypatch.setattr(reconcile_module, "_mail_if_due", onboarding_first)
    clean = asyncio.run(run(ONBOARDED, None))
    join = next(p.index for p in clean.points if p.call == "Matrix POST admin join")
    crashed = asyncio.run(run(ONBOARDED, CrashPlan(join, after_effect=True)))
    assert any("mails outside the crash window" in p for p in crashed.problems), crashed.problems
