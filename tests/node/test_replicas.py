"""Two replicas of the chart on the real node: one acts (the Lease), deleting the acting Pod hands
the Lease over within its bound, and ``helm upgrade`` with a changed value rolls the Pods over;
no Invitation loses or doubles its mail on the way.

Its own release namespace and Invitation namespace, so that it shares only the node with
tests/node/test_install.py.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.controlplane.cluster import ControlPlane
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi
from tests.node.cluster_api import RELEASE, SELECTOR, install, pods, ready, report, wait_for
from tests.node.conftest import MAS_CLIENT_SECRET, NodeCluster
from tests.node.test_install import make_namespaces, make_release_secrets, node_values

pytestmark = pytest.mark.integration

RELEASE_NS = "ess-replicas"
WATCHED_NS = "matrix-invite-replicas"
# leadership.py: LEASE_DURATION 15 s, RETRY_PERIOD 2 s; a standby takes a free or expired Lease
# on its next attempt. Deleting a Pod lets its copy give the Lease up, which is faster.
LEASE_BOUND_SECONDS = 15 + 2
GRACE_PERIOD_SECONDS = 30  # the Pod's terminationGracePeriodSeconds (the chart sets none)


def _lease_time(value: str) -> dt.datetime:
    """A Lease's MicroTime (RFC 3339 with microseconds), as the copies wrote it."""
    return dt.datetime.fromisoformat(value)


def lease_holder(cp: ControlPlane) -> str:
    lease = cp.get(f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{RELEASE}")
    return "" if lease is None else str(lease["spec"].get("holderIdentity") or "")


def acting_pod(cp: ControlPlane) -> str:
    """The Pod whose copy holds the Lease (identity: the Pod's name, '_', a random part)."""
    holder = lease_holder(cp)
    names = [p["metadata"]["name"] for p in pods(cp, RELEASE_NS)]
    return next((n for n in names if holder.startswith(f"{n}_")), "")


def mails_by_recipient(smtp: SmtpDouble) -> Counter[str]:
    return Counter(rcpt for m in smtp.messages for rcpt in m.rcpt_tos)


def invite(invitations: InvitationsApi, who: str) -> None:
    invitations.apply(who, email=f"{who}@example.org", usageLimit=1, validFor="168h", locale="en")


def test_two_replicas_hand_the_lease_over_and_roll_without_lost_or_doubled_mail(
    node_cluster: NodeCluster, node_mas: MasDouble, node_smtp: SmtpDouble
) -> None:
    cp = node_cluster.control_plane
    values: dict[str, Any] = node_values(
        node_cluster, node_mas, node_smtp, replicaCount=2, watchNamespaces=[WATCHED_NS]
    )
    make_namespaces(cp, RELEASE_NS, WATCHED_NS)
    make_release_secrets(cp, RELEASE_NS, values, MAS_CLIENT_SECRET)
    install(cp, values, RELEASE_NS)
    assert len([p for p in pods(cp, RELEASE_NS) if ready(p)]) == 2, report(cp, RELEASE_NS)
    wait_for("one copy holds the Lease", lambda: bool(acting_pod(cp)), 30, lambda: "")
    invitations = InvitationsApi(cp, WATCHED_NS)
    before = mails_by_recipient(node_smtp)

    invite(invitations, "grace")
    invitations.wait_for_phase("grace", "Sent", timeout=60)

    # Delete the acting Pod: another copy takes the Lease within its bound (the standby, or the
    # Pod the ReplicaSet starts in its place, whichever asks first). The bound counts from the
    # last renewal of the deleted copy, not from the deletion: during its graceful stop (Kopf's
    # cleanup, up to the Pod's grace period) it still acts and still renews, rightly.
    active = acting_pod(cp)
    deleted_at = time.monotonic()
    cp.api("DELETE", f"/api/v1/namespaces/{RELEASE_NS}/pods/{active}")
    last_renewed_by_old: dt.datetime | None = None

    def taken_over() -> bool:
        nonlocal last_renewed_by_old
        lease = cp.get(f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{RELEASE}")
        spec = (lease or {}).get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        if not holder or holder.startswith(f"{active}_"):  # still the old copy's, or released
            last_renewed_by_old = _lease_time(spec["renewTime"])
            return False
        return True

    wait_for(
        f"a copy other than {active} holds the Lease",
        taken_over,
        GRACE_PERIOD_SECONDS + LEASE_BOUND_SECONDS + 5,
        lambda: f"holder {lease_holder(cp)!r}\n{report(cp, RELEASE_NS)}",
    )
    after_deletion = time.monotonic() - deleted_at
    lease = cp.get(f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{RELEASE}")
    assert lease is not None
    assert last_renewed_by_old is not None
    handover = (_lease_time(lease["spec"]["acquireTime"]) - last_renewed_by_old).total_seconds()
    print(
        f"\nLease handover: {handover:.1f} s after the deleted copy's last renewal"
        f" ({after_deletion:.1f} s after the deletion)"
    )
    assert handover <= LEASE_BOUND_SECONDS + 1  # one poll interval of slack

    invite(invitations, "hopper")
    invitations.wait_for_phase("hopper", "Sent", timeout=60)

    # helm upgrade with a changed value: new Pods (the template changed), one Invitation made
    # while they roll over.
    old_uids = {p["metadata"]["uid"] for p in pods(cp, RELEASE_NS)}
    values["mail"]["fromName"] = "Example Matrix, upgraded"
    upgrade = threading.Thread(
        target=install, args=(cp, values, RELEASE_NS), kwargs={"command": "upgrade"}
    )
    upgrade.start()
    invite(invitations, "lamarr")
    upgrade.join(timeout=300)
    assert not upgrade.is_alive()
    rolled = pods(cp, RELEASE_NS)
    assert len(rolled) == 2
    assert not old_uids & {p["metadata"]["uid"] for p in rolled}, "helm upgrade rolled no Pod"
    invitations.wait_for_phase("lamarr", "Sent", timeout=90)

    def only_new_copies() -> bool:
        listed = cp.get(f"/api/v1/namespaces/{RELEASE_NS}/pods?labelSelector={SELECTOR}")
        uids = {p["metadata"]["uid"] for p in (listed or {"items": []})["items"]}
        return not uids & old_uids and bool(acting_pod(cp))

    # An old copy finishing its work after SIGTERM may still send; once they are gone and a new
    # copy holds the Lease, mail carries the upgraded value.
    wait_for("the old Pods gone, a new copy acting", only_new_copies, 60, lambda: "")
    invite(invitations, "noether")
    invitations.wait_for_phase("noether", "Sent", timeout=60)

    def all_mailed() -> bool:
        sent = mails_by_recipient(node_smtp) - before
        return all(sent[f"{w}@example.org"] >= 1 for w in ("grace", "hopper", "lamarr", "noether"))

    wait_for("every Invitation's mail", all_mailed, 30, lambda: str(node_smtp.messages))
    time.sleep(5)  # a doubled mail would come from a copy that missed the first one's status
    sent = mails_by_recipient(node_smtp) - before
    assert sent == Counter(
        {f"{w}@example.org": 1 for w in ("grace", "hopper", "lamarr", "noether")}
    )
    [last] = [m for m in node_smtp.messages if m.rcpt_tos == ("noether@example.org",)]
    assert "Example Matrix, upgraded" in str(last.message["From"])
