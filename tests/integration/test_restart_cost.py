"""A restart with settled Invitations in place costs nothing: no MAS write, no mail, no API write.

The count-based half of the restart benchmark (bench/run.py, 20,000 Invitations; the seconds
until idle stay there): here at a size CI affords. "Idle" is a count, not a clock: Kopf has
logged "Resuming is processed" once per Invitation, and the sync loop has listed MAS after that.

Both operators run with a worker limit far below the number of Invitations
(`MATRIX_INVITE_WORKER_LIMIT`): the burst and the restart's listing wait in Kopf's line, as
thousands do with the default of 200, and every Invitation is still handled, and mailed once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.doubles.mas import (
    DISCOVERY_PATH,
    OAUTH_TOKEN_PATH,
    PROVIDERS_PATH,
    SITE_CONFIG_PATH,
    TOKENS_PATH,
    MasDouble,
)
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi, wait_until
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

COUNT = 60
WORKER_LIMIT = "4"  # 60 Invitations at once: 56 wait in line for a worker


def settled(invitations: InvitationsApi) -> dict[str, dict[str, Any]]:
    """Every Invitation of the namespace that is Sent for its generation, by name."""
    items = invitations.listed()
    return {
        item["metadata"]["name"]: item
        for item in items
        if (item.get("status") or {}).get("phase") == "Sent"
        and item["status"].get("observedGeneration") == item["metadata"]["generation"]
    }


def test_restart_makes_no_mas_write_no_mail_and_no_api_write(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator(  # no waiting for mail slots
        MATRIX_INVITE_MAIL_RATE_PER_MINUTE="0", MATRIX_INVITE_WORKER_LIMIT=WORKER_LIMIT
    )
    manifests = [
        yaml.safe_load(invitations.manifest(f"guest-{i:03d}", email=f"guest{i}@example.org"))
        for i in range(COUNT)
    ]
    invitations.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    wait_until(f"{COUNT} Invitations Sent", lambda: len(settled(invitations)) == COUNT, 180)
    smtp.wait_for_sync(COUNT, timeout=10)
    recipients = Counter(to for message in smtp.messages for to in message.rcpt_tos)
    assert recipients == {f"guest{i}@example.org": 1 for i in range(COUNT)}, recipients
    first.stop_after_cleanup()

    before = settled(invitations)
    versions = {name: body["metadata"]["resourceVersion"] for name, body in before.items()}
    mails = len(smtp.messages)
    mas.reset_request_log()

    second = start_operator(
        MATRIX_INVITE_MAIL_RATE_PER_MINUTE="0", MATRIX_INVITE_WORKER_LIMIT=WORKER_LIMIT
    )
    resumed = "Resuming is processed: 1 succeeded"
    wait_until(
        f"{COUNT} Invitations resumed",
        lambda: second.logs().count(resumed) >= COUNT,
        120,
    )
    # Then one full sync pass (every second here), which compares each Invitation with MAS.
    second.wait_for_sync_pass()

    after = settled(invitations)
    assert after.keys() == before.keys()
    changed = [n for n, body in after.items() if body["metadata"]["resourceVersion"] != versions[n]]
    assert changed == [], f"Invitations written on restart: {changed[:5]}"
    assert len(smtp.messages) == mails, "a restart must not mail anyone"
    requests = Counter((r.method, r.path_template) for r in mas.request_log())
    reads = {("GET", TOKENS_PATH), ("POST", OAUTH_TOKEN_PATH), ("GET", DISCOVERY_PATH)}
    reads |= {("GET", SITE_CONFIG_PATH), ("GET", PROVIDERS_PATH)}  # what the mail must say
    assert set(requests) <= reads, f"MAS requests other than listing: {requests}"
    assert second.returncode is None, second.log_tail()
