"""What Flux sees: the kstatus verdict of every phase, by the real kstatus library.

Invitations are driven into each phase on the real API server by the real operator, read back
with ``kubectl get invitations -o json`` and judged by the kstatus checker built from
``tests/kstatus`` (``sigs.k8s.io/cli-utils/pkg/kstatus/status``) and by the Flux
``healthCheckExprs`` of FACTS.md in cel-python (see :mod:`tests.integration.health`).

Expected, per FACTS.md: Current for Sent, Accepted, Expired and Revoked (terminal outcomes are
reconciled states); InProgress for Pending (Reconciling=True, e.g. while MAS is down) and
whenever ``observedGeneration`` lags ``generation``; Failed for Stalled. An object applied a
moment ago, before the operator wrote any status, has no conditions, which kstatus calls Current:
the race that the CEL ``current`` expression closes, since it cannot even be evaluated without a
``status`` (Flux then keeps waiting).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator

import pytest

from tests.doubles.mas import MasDouble
from tests.integration.harness import Body, InvitationsApi, condition
from tests.integration.health import FluxCel, Verdict, kstatus_verdicts
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

# name → (phase the operator shows, verdict Flux must reach)
EXPECTED = {
    "pending": ("Pending", "InProgress"),
    "sent": ("Sent", "Current"),
    "accepted": ("Accepted", "Current"),
    "expired": ("Expired", "Current"),
    "revoked": ("Revoked", "Current"),
    "failed": ("Failed", "Failed"),
}


@pytest.fixture(scope="module")
def cel() -> FluxCel:
    return FluxCel()


@pytest.fixture
def mas_healed(mas: MasDouble) -> Iterator[MasDouble]:
    """The MAS double, with any faults a test left queued cleared before teardown."""
    yield mas
    mas.clear_faults()


def listing(invitations: InvitationsApi) -> tuple[str, dict[str, Body]]:
    """``kubectl get invitations -o json`` as text (for kstatus) and parsed, by name."""
    text = invitations.kubectl("get", "invitations", "-o", "json")
    items: list[Body] = json.loads(text)["items"]
    return text, {item["metadata"]["name"]: item for item in items}


def table(rows: list[tuple[str, str, Verdict, Verdict]]) -> str:
    lines = [f"{'object':<10} {'phase':<10} {'kstatus':<12} {'Flux CEL':<12} kstatus message"]
    for name, phase, kstatus, flux in rows:
        lines.append(
            f"{name:<10} {phase:<10} {kstatus.status:<12} {flux.status:<12} {kstatus.message}"
        )
    return "\n".join(lines)


def is_retrying(body: Body) -> bool:
    status = body.get("status") or {}
    reconciling = condition(body, "Reconciling")
    return bool(
        status.get("phase") == "Pending"
        and status.get("observedGeneration") == body["metadata"]["generation"]
        and reconciling is not None
        and reconciling["status"] == "True"
    )


def test_each_phase_gets_the_verdict_flux_needs(
    invitations: InvitationsApi,
    mas_healed: MasDouble,
    start_operator: Callable[..., OperatorProcess],
    cel: FluxCel,
) -> None:
    mas = mas_healed
    operator = start_operator()
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)
    invitations.apply("sent", email="sent@example.org")
    invitations.apply("accepted", email="accepted@example.org")
    invitations.apply("expired", email="expired@example.org", validFor="8s")
    invitations.apply("revoked", email="revoked@example.org")
    # The CRD cannot see the clock, so it accepts this; the operator cannot ever issue it.
    invitations.apply("failed", email="failed@example.org", expiresAt=past.isoformat())

    accepted = invitations.wait_for_phase("accepted", "Sent")
    mas.simulate_registration(accepted["status"]["tokenId"])
    invitations.wait_for_phase("revoked", "Sent")
    invitations.patch_spec("revoked", revoked=True)
    for name in ("sent", "accepted", "revoked", "failed"):
        invitations.wait_for_phase(name, EXPECTED[name][0])
    invitations.wait_for_phase("expired", "Expired", timeout=30)

    # MAS goes down: a new Invitation cannot get its token and is retried.
    mas.fail_next(10_000, status=503)
    invitations.apply("pending", email="pending@example.org")
    invitations.wait_for("pending", is_retrying, what="Pending and retrying")

    text, bodies = listing(invitations)
    kstatus = kstatus_verdicts(text)
    rows = [
        (name, bodies[name]["status"]["phase"], kstatus[name], cel.verdict(bodies[name]))
        for name in EXPECTED
    ]
    report = table(rows)
    print(f"\n{report}")
    assert {name: (phase, k.status) for name, phase, k, _ in rows} == EXPECTED, report
    assert all(k.status == flux.status for _, _, k, flux in rows), report
    # The failure Flux reports is the operator's own sentence, not a generic one.
    assert "expires at" in kstatus["failed"].message, report
    assert kstatus["pending"].message.startswith("MAS answered"), report
    assert operator.returncode is None, operator.log_tail()


def test_before_first_status_and_after_an_unobserved_edit(
    invitations: InvitationsApi,
    start_operator: Callable[..., OperatorProcess],
    cel: FluxCel,
) -> None:
    # Applied while no operator runs: exactly the moment right after `flux apply`.
    invitations.apply("fresh", email="fresh@example.org")
    text, bodies = listing(invitations)
    assert "status" not in bodies["fresh"]
    # kstatus: no conditions at all is Current, so `wait: true` alone would pass too early...
    assert kstatus_verdicts(text)["fresh"] == Verdict("Current", "Resource is current")
    # ...while the CEL `current` expression cannot be evaluated, which Flux treats as not ready.
    assert isinstance(cel.current(bodies["fresh"]), str)
    assert cel.verdict(bodies["fresh"]).status == "Unknown"

    operator = start_operator()
    invitations.wait_for_phase("fresh", "Sent")
    text, bodies = listing(invitations)
    assert kstatus_verdicts(text)["fresh"].status == "Current"
    assert cel.verdict(bodies["fresh"]).status == "Current"

    # An edit the operator has not seen yet: generation moves on, observedGeneration stays.
    operator.stop_after_cleanup()
    invitations.patch_spec("fresh", usageLimit=2)
    text, bodies = listing(invitations)
    meta, status = bodies["fresh"]["metadata"], bodies["fresh"]["status"]
    assert (meta["generation"], status["observedGeneration"]) == (2, 1)
    ready = condition(bodies["fresh"], "Ready")
    # Ready=True still describes generation 1; only observedGeneration tells it is stale.
    assert ready is not None
    assert ready["status"] == "True"
    verdict = kstatus_verdicts(text)["fresh"]
    assert verdict.status == "InProgress", verdict
    assert "observed generation is 1" in verdict.message
    assert cel.verdict(bodies["fresh"]).status == "InProgress"

    # Deleted while the operator is away: the finalizer holds it, kstatus says Terminating.
    invitations.kubectl("delete", "invitation", "fresh", "--wait=false")
    text, _ = listing(invitations)
    assert kstatus_verdicts(text)["fresh"].status == "Terminating"

    start_operator()
    invitations.wait_gone("fresh")
