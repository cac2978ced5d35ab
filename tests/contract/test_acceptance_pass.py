"""The acceptance pass: an invitee's sign-up shows without waiting for the full pass, and the
full pass still corrects everything it did before.

As `test_sync_cost.py`: the operator's real MAS backend lists the MAS double over HTTP (page
size 100, client credentials), its real `KubeApi` writes to a recorder, and each status patch
comes back through the "watch" (`SyncBench`). Out-of-band changes go through the Admin API as
MAS's admin would make them. No timing: passes are run one after another by the test.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench.sync_cost import SyncBench
from tests.doubles.kube_recorder import KubeRecorder
from tests.doubles.mas import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, MasDouble

N = 250  # three pages: the newest page holds 150..249, the full pass's first page 0..99
NEWEST = 249
OLD = 3


def patched_names(bench: SyncBench) -> list[str]:
    return sorted(p.path.split("/")[-2] for p in bench.kube.status_patches())


async def test_an_acceptance_is_seen_by_one_request_for_the_newest_tokens(
    bench: SyncBench, mas_double: MasDouble
) -> None:
    await bench.seed(N)
    await bench.run_pass()  # settled; the access token is cached from here on
    mas_double.simulate_registration(bench.token_ids[NEWEST])
    mas_double.simulate_registration(bench.token_ids[OLD])

    recent = await bench.run_recent_pass()
    # One list request (page[last]=100), nothing else asked of MAS.
    assert (recent.list_requests, recent.mas_requests) == (1, 1)
    assert recent.report.listed == 100  # the newest page: 150..249
    # The newest Invitation shows its acceptance now, as the full pass would show it.
    assert patched_names(bench) == [f"invite-{NEWEST:05d}"]
    (patch,) = bench.kube.status_patches()
    assert (patch.body["status"]["phase"], patch.body["status"]["timesUsed"]) == ("Accepted", 1)
    assert [e.body["reason"] for e in bench.kube.events()] == ["InvitationAccepted"]
    # The old token is not among the newest: that one is the full pass's.
    assert f"invite-{OLD:05d}" not in patched_names(bench)

    full = await bench.run_pass()
    assert patched_names(bench) == [f"invite-{OLD:05d}"]
    assert full.report.patched == 1

    again = await bench.run_recent_pass()
    assert (again.mas_requests, again.kube_requests) == (1, 0)


async def test_no_request_once_none_of_the_newest_awaits_its_invitee(
    bench: SyncBench, mas_double: MasDouble
) -> None:
    await bench.seed(N)
    await bench.run_pass()
    assert bench.sync is not None
    assert bench.sync.awaits_acceptance()  # Sent Invitations, tokens newer than no listing yet
    for token_id in bench.token_ids[-100:]:
        mas_double.simulate_registration(token_id)
    recent = await bench.run_recent_pass()
    assert recent.report.patched == 100
    # 150 older Invitations are still Sent, but their tokens are not among the newest: the
    # loop makes no acceptance request for them (the full pass sees them).
    assert not bench.sync.awaits_acceptance()


async def out_of_band(bench: SyncBench, mas_double: MasDouble) -> None:
    """What happens in MAS behind the operator's back, to old tokens and to the newest."""
    admin = bench.admin()
    for index in (OLD, NEWEST - 1):
        mas_double.simulate_registration(bench.token_ids[index])
    for index in (OLD + 1, NEWEST - 2):
        await admin.revoke(bench.token_ids[index])


# Status fields that differ between two seeds (token ids, times), not between two outcomes.
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SEED_SPECIFIC = {
    "tokenId",
    "mailedTokenId",
    "lastSyncedAt",
    "lastUsedAt",
    "expiresAt",
    "mailSentAt",
}


def settled_statuses(bench: SyncBench) -> dict[str, Any]:
    """Every Invitation's status as the API server holds it, by name, without what differs
    from one seed to the next."""

    def comparable(status: dict[str, Any]) -> dict[str, Any]:
        conditions = [
            {k: v for k, v in c.items() if k in ("type", "status", "reason")}
            for c in status.get("conditions", [])
        ]
        kept = {k: v for k, v in status.items() if k not in SEED_SPECIFIC}
        kept["message"] = TIMESTAMP.sub("<time>", kept.get("message", ""))
        return {**kept, "conditions": conditions}

    return {
        body["metadata"]["name"]: comparable(body.get("status") or {})
        for path, body in bench.kube.objects.items()
        if "/invitations/" in path
    }


@pytest.mark.parametrize("acceptance_passes", [0, 2])
async def test_the_full_pass_ends_where_it_did_without_acceptance_passes(
    mas_double: MasDouble, acceptance_passes: int
) -> None:
    """The same out-of-band changes, then a full pass: with acceptance passes in between or
    without any, every Invitation ends the same (and each change shows)."""
    ends = {}
    events: dict[int, list[str]] = {}
    for passes in sorted({0, acceptance_passes}):
        with KubeRecorder() as kube:
            bench = SyncBench(mas_double, kube, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
            try:
                await bench.seed(N)
                await bench.run_pass()
                await out_of_band(bench, mas_double)
                seen: list[str] = []
                for _ in range(passes):
                    await bench.run_recent_pass()
                    seen += [e.body["reason"] for e in bench.kube.events()]
                if passes:  # the newest two changes were the acceptance passes' to show
                    assert sorted(seen) == ["InvitationAccepted", "RevokedOutsideGit"]
                full = await bench.run_pass()
                seen += [e.body["reason"] for e in bench.kube.events()]
                assert (full.report.failed, full.report.reconciled) == (0, 0)
                ends[passes] = settled_statuses(bench)
                events[passes] = sorted(seen)
                phases = {name: status["phase"] for name, status in ends[passes].items()}
            finally:
                await bench.aclose()
        assert phases[f"invite-{OLD:05d}"] == phases[f"invite-{NEWEST - 1:05d}"] == "Accepted"
        assert phases[f"invite-{OLD + 1:05d}"] == phases[f"invite-{NEWEST - 2:05d}"] == "Revoked"
        assert list(phases.values()).count("Sent") == N - 4
    assert ends[acceptance_passes] == ends[0]
    # Each change announced once, whichever pass saw it.
    assert (
        events[acceptance_passes]
        == events[0]
        == sorted(["InvitationAccepted"] * 2 + ["RevokedOutsideGit"] * 2)
    )
