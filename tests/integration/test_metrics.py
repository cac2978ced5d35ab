"""Every metric docs/metrics.md lists is on /metrics after one reconciled Invitation, with the
values that Invitation (and one that cannot work) should have produced."""

from __future__ import annotations

import datetime as dt
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented() -> dict[str, str]:
    """Metric name -> type, from the table in docs/metrics.md."""
    rows = re.findall(r"^\| `(matrix_invite_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.MULTILINE)
    return dict(rows)


def scrape(process: OperatorProcess) -> list[Sample]:
    port = process.env["MATRIX_INVITE_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert matching, f"no sample {name}{labels}"
    return sum(matching)


def test_every_documented_metric_is_served(
    invitations: InvitationsApi,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    metrics = documented()
    assert len(metrics) >= 7, metrics
    process = start_operator()
    invitations.apply("ada", email="ada@example.org")
    invitations.wait_for_phase("ada", "Sent")
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).replace(microsecond=0)
    invitations.apply("late", email="late@example.org", expiresAt=past.isoformat())
    invitations.wait_for_phase("late", "Failed")
    smtp.wait_for_sync(1, timeout=5)

    # The gauges read the operator's watch cache, which trails the API by one watch event, and
    # the sync pass runs every second here: wait until both have caught up.
    deadline = time.monotonic() + 20
    while True:
        samples = scrape(process)
        synced = value(samples, "matrix_invite_last_successful_sync_timestamp_seconds")
        phases = (
            value(samples, "matrix_invite_invitations", phase="Sent"),
            value(samples, "matrix_invite_invitations", phase="Failed"),
        )
        if (synced > 0 and phases == (1, 1)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    names = {s.name for s in samples}
    for name, kind in metrics.items():
        served = f"{name}_count" if kind == "histogram" else name
        assert served in names, f"{name} ({kind}) is documented but not served"

    assert time.time() - 60 < synced <= time.time()
    assert value(samples, "matrix_invite_invitations", phase="Sent") == 1
    assert value(samples, "matrix_invite_invitations", phase="Failed") == 1
    assert value(samples, "matrix_invite_invitations", phase="Accepted") == 0
    assert value(samples, "matrix_invite_mails_sent_total") == 1
    assert value(samples, "matrix_invite_mails_failed_total") == 0
    created = {"endpoint": "/user-registration-tokens", "method": "POST"}
    assert value(samples, "matrix_invite_mas_requests_total", **created, outcome="ok") == 1
    assert value(samples, "matrix_invite_mas_request_duration_seconds_count", **created) == 1
    assert value(samples, "matrix_invite_mas_requests_total", method="GET", outcome="ok") >= 1
    assert (
        value(
            samples,
            "matrix_invite_reconcile_errors_total",
            reason="InvalidSpec",
            kind="permanent",
        )
        >= 1
    )
