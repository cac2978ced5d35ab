"""The status sync's cost, as `bench/sync_cost.py` measures it, held to its bound in CI.

The operator's real MAS backend (page size 100, client credentials) lists the MAS double over
HTTP; its real `KubeApi` writes to a recorder. One pass may cost MAS at most ceil(N / 100) list
requests plus one access-token request, and must write nothing to Kubernetes unless MAS changed.
"""

from __future__ import annotations

import math

import pytest

from bench.sync_cost import PAGE_SIZE, SyncBench
from tests.doubles.mas import MasDouble


@pytest.mark.parametrize("n", [1, 250])
async def test_a_pass_lists_each_page_once_and_writes_nothing(bench: SyncBench, n: int) -> None:
    await bench.seed(n)
    pages = math.ceil(n / PAGE_SIZE)

    cold = await bench.run_pass()
    assert (cold.list_requests, cold.token_requests, cold.other_mas_requests) == (pages, 1, 0)
    assert cold.mas_requests <= cold.bound == pages + 1
    assert cold.report.listed == n
    assert (cold.report.patched, cold.report.reconciled, cold.report.failed) == (0, 0, 0)
    assert bench.kube.requests() == []

    # The access token is cached: the next pass costs the pages alone.
    warm = await bench.run_pass()
    assert (warm.list_requests, warm.mas_requests, warm.discovery_requests) == (pages, pages, 0)
    assert warm.kube_requests == 0


async def test_one_used_token_costs_exactly_one_status_write(
    bench: SyncBench, mas_double: MasDouble
) -> None:
    await bench.seed(250)
    await bench.run_pass()
    used = bench.token_ids[137]
    mas_double.simulate_registration(used)

    cost = await bench.run_pass()
    assert cost.mas_requests == 3
    assert cost.report.patched == 1
    (patch,) = bench.kube.status_patches()
    assert patch.path.endswith("/invitations/invite-00137/status")
    assert patch.content_type == "application/merge-patch+json"
    # A merge patch of the changed fields only: the token id stays as it was.
    status = patch.body["status"]
    assert (status["phase"], status["timesUsed"], status["valid"]) == ("Accepted", 1, False)
    assert "tokenId" not in status
    (event,) = bench.kube.events()
    assert event.body["reason"] == "InvitationAccepted"
    # Decided again on a fresh read of that one Invitation before writing (docs/architecture.md).
    (read,) = [r for r in bench.kube.requests() if r.is_read]
    assert read.path == patch.path.removesuffix("/status")
    assert len(bench.kube.requests()) == 3

    settled = await bench.run_pass()
    assert settled.kube_requests == 0


async def test_every_invitation_is_compared_not_skipped(
    bench: SyncBench, mas_double: MasDouble
) -> None:
    # The zero-write result above means something only if each Invitation is looked at.
    await bench.seed(120)
    await bench.run_pass()
    for token_id in bench.token_ids:
        mas_double.simulate_registration(token_id)
    cost = await bench.run_pass()
    assert cost.list_requests == 2
    assert cost.status_patches == cost.report.patched == 120
    assert len({patch.path for patch in bench.kube.status_patches()}) == 120
