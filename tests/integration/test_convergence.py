"""Every generation converges, whatever edits and reverts happen while MAS is down.

Kopf runs a handler only when the spec differs from the one it last handled; an edit reverted
while its retry waits for an outage to end is dropped ("the essence is the same"). Once MAS
answers again, the newest generation must still be reconciled: observedGeneration catches up and
MAS holds what the spec says; and a revocation the operator made itself (its answer lost) is
undone when the spec flips back, never blamed on someone outside Git.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import Body, InvitationsApi, condition
from tests.integration.invariants import check_invariants
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

# Long enough that the revert lands while the edit's retry still waits.
SLOW_RETRY = {"MATRIX_INVITE_RETRY_BASE_SECONDS": "4", "MATRIX_INVITE_RETRY_MAX_SECONDS": "8"}
OUTAGE = 100_000  # requests answered 503 until clear_faults()


def reconciling_generation(generation: int) -> Callable[[Body], bool]:
    def check(body: Body) -> bool:
        status = body.get("status") or {}
        ready = condition(body, "Ready")
        return bool(
            status.get("observedGeneration") == generation
            and ready is not None
            and ready["reason"] == "MasUnavailable"
        )

    return check


def converged(body: Body) -> bool:
    status = body.get("status") or {}
    ready = condition(body, "Ready")
    return bool(
        status.get("observedGeneration") == body["metadata"]["generation"]
        and ready is not None
        and ready["status"] == "True"
    )


def test_a_limit_edited_and_reverted_during_an_outage_converges(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**SLOW_RETRY)
    invitations.apply("limit", email="limit@example.org", usageLimit=1)
    body = invitations.wait_for_phase("limit", "Sent")
    token_id = body["status"]["tokenId"]

    mas.fail_next(OUTAGE, 503)
    invitations.patch_spec("limit", usageLimit=2)
    invitations.wait_for("limit", reconciling_generation(2), what="generation 2 reconciling")
    invitations.patch_spec("limit", usageLimit=1)  # back, before the retry of generation 2
    mas.clear_faults()

    body = invitations.wait_for("limit", converged, timeout=60, what="generation 3 Ready")
    assert body["metadata"]["generation"] == 3
    assert body["status"]["usageLimit"] == 1
    assert mas.token(token_id)["usage_limit"] == 1  # type: ignore[index]
    assert check_invariants(invitations, mas, smtp).violations == []


def test_a_revocation_with_a_lost_answer_then_undone_converges(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator(**SLOW_RETRY)
    invitations.apply("flip", email="flip@example.org")
    body = invitations.wait_for_phase("flip", "Sent")
    token_id = body["status"]["tokenId"]

    # MAS carries the revoke out, its answer is lost, and MAS goes down with it.
    mas.on_next_write(lambda: mas.fail_next(OUTAGE, 503), when="after")
    invitations.patch_spec("flip", revoked=True)
    invitations.wait_for("flip", reconciling_generation(2), what="generation 2 reconciling")
    assert mas.token(token_id)["revoked_at"] is not None  # type: ignore[index]
    invitations.patch_spec("flip", revoked=False)  # undone, before the retry
    mas.clear_faults()

    body = invitations.wait_for("flip", converged, timeout=60, what="generation 3 Ready")
    assert body["status"]["phase"] == "Sent"
    token = mas.token(token_id)
    assert token is not None
    assert (token["valid"], token["revoked_at"]) == (True, None), "MAS must match the spec"
    assert "RevokedOutsideGit" not in invitations.event_reasons("flip")

    # And a restart does not blame the operator's own revocation on anyone.
    operator.stop_after_cleanup()
    start_operator(**SLOW_RETRY)
    invitations.wait_for("flip", converged, timeout=30, what="still Ready after a restart")
    assert "RevokedOutsideGit" not in invitations.event_reasons("flip")
    assert check_invariants(invitations, mas, smtp).violations == []
