"""Kopf's diff base is derived from status (handlers.HandledChanges): one Kopf write per new
Invitation (the finalizer), and nothing lost across a restart or an upgrade.

Kopf used to write the handled spec into an annotation (`last-handled-configuration`, with a
`kopf-managed` marker) after every handled change: a second PATCH and watch event per new
Invitation and per edit. Now status tells: observedGeneration, the answered resend request, and
Kopf's progress record while a retry is under way. An older version's annotations are no longer
read; what was edited or asked for while it was replaced shows in status all the same.
"""

from __future__ import annotations

from collections.abc import Callable

import kopf
import pytest

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import Body, InvitationsApi, wait_until
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

GROUP = "matrix-invite.dev"
RESEND = f"{GROUP}/resend"
OLD_DIFF_BASE = f"{GROUP}/last-handled-configuration"
MARKER = f"{GROUP}/kopf-managed"
PROGRESS = f"{GROUP}/reconcile"


def annotations_of(invitations: InvitationsApi, name: str) -> dict[str, str]:
    body = invitations.get(name)
    assert body is not None
    found: dict[str, str] = body["metadata"].get("annotations") or {}
    return found


def mails_sent(n: int) -> Callable[[Body], bool]:
    return lambda b: (b.get("status") or {}).get("mailsSent") == n


def current(b: Body) -> bool:
    return bool((b.get("status") or {}).get("observedGeneration") == b["metadata"]["generation"])


def stamp_as_the_older_version(invitations: InvitationsApi, name: str) -> None:
    """The annotations an operator before this change left: Kopf's own diff base (its class, as
    that version configured it: the resend annotation kept in the essence) and marker."""
    body = invitations.get(name)
    assert body is not None
    storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    kopf_body = kopf.Body(body)  # type: ignore[arg-type]
    essence = storage.build(body=kopf_body, extra_fields=[("metadata", "annotations", RESEND)])
    patch = kopf.Patch()
    storage.store(body=kopf_body, patch=patch, essence=essence)
    stamped = dict(patch["metadata"]["annotations"])
    assert set(stamped) == {OLD_DIFF_BASE, MARKER}
    invitations.kubectl(
        "annotate", "invitation", name, *(f"{k}={v}" for k, v in stamped.items()), "--overwrite"
    )


def test_a_new_invitation_costs_kopf_only_its_finalizer_and_settles(
    invitations: InvitationsApi,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator()
    invitations.apply("ada", email="ada@example.org")
    invitations.wait_for_phase("ada", "Sent")
    smtp.wait_for_sync(1, timeout=5)
    operator.wait_for_sync_pass()
    operator.wait_for_sync_pass()
    body = invitations.get("ada")
    assert body is not None
    # No diff base, no marker, no progress record: Kopf wrote only its finalizer.
    assert not set(annotations_of(invitations, "ada")) & {OLD_DIFF_BASE, MARKER, PROGRESS}
    assert body["metadata"]["finalizers"] == [f"{GROUP}/revoke-token"]
    # And nothing follows: the watch events of our own status writes start no handler again.
    version = body["metadata"]["resourceVersion"]
    operator.wait_for_sync_pass()
    assert invitations.status("ada")["mailsSent"] == 1
    assert invitations.get("ada")["metadata"]["resourceVersion"] == version  # type: ignore[index]
    assert operator.log_lines("Creation is processed: 1 succeeded")


def test_an_upgrade_loses_no_edit_and_mails_no_one_twice(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator()
    names = ("edited", "resent", "untouched")
    for name in names:
        invitations.apply(name, email=f"{name}@example.org")
    for name in names:
        invitations.wait_for_phase(name, "Sent")
    smtp.wait_for_sync(3, timeout=10)
    # A resend the old version answered already stays answered.
    invitations.kubectl("annotate", "invitation", "untouched", f"{RESEND}=done")
    invitations.wait_for("untouched", mails_sent(2), what="mailed twice")
    smtp.wait_for_sync(4, timeout=10)
    first.stop_after_cleanup()
    for name in names:
        stamp_as_the_older_version(invitations, name)

    # While no operator runs (the upgrade): an edit, and a resend asked for by annotation.
    invitations.patch_spec("edited", usageLimit=3)
    invitations.kubectl("annotate", "invitation", "resent", f"{RESEND}=please")
    untouched = invitations.get("untouched")
    assert untouched is not None
    tokens = {t["id"]: t for t in mas.tokens()}

    second = start_operator()
    edited = invitations.wait_for("edited", current, what="reconciled for its new generation")
    assert tokens[edited["status"]["tokenId"]]["usage_limit"] == 1
    wait_until(
        "the edited limit in MAS",
        lambda: mas.token(edited["status"]["tokenId"])["usage_limit"] == 3,  # type: ignore[index]
        10,
    )
    invitations.wait_for("resent", mails_sent(2), what="mailed again after the upgrade")
    smtp.wait_for_sync(5, timeout=10)
    second.wait_for_sync_pass()
    second.wait_for_sync_pass()

    assert len(smtp.messages) == 5, [m.rcpt_tos for m in smtp.messages]
    assert [m.rcpt_tos for m in smtp.messages].count(("resent@example.org",)) == 2
    assert invitations.status("untouched")["mailsSent"] == 2
    assert invitations.status("edited")["mailsSent"] == 1
    assert len(mas.tokens()) == 3
    after = invitations.get("untouched")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == untouched["metadata"]["resourceVersion"]


def test_a_retry_under_way_survives_a_restart(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator()
    invitations.apply("grace", email="grace@example.org")
    token_id = invitations.wait_for_phase("grace", "Sent")["status"]["tokenId"]
    smtp.wait_for_sync(1, timeout=5)

    # The edit's reconcile fails at MAS's update: status names the new generation (phase Sent),
    # and only Kopf's progress record says the change is not handled yet.
    mas.fail_next(100_000, 503, method="PUT")
    invitations.patch_spec("grace", usageLimit=2)
    wait_until("Kopf's retry record", lambda: PROGRESS in annotations_of(invitations, "grace"), 20)
    assert current(invitations.get("grace"))  # type: ignore[arg-type]
    first.kill()
    mas.clear_faults()

    second = start_operator()
    wait_until(
        "the edited limit in MAS",
        lambda: mas.token(token_id)["usage_limit"] == 2,  # type: ignore[index]
        20,
    )
    wait_until(
        "the retry record gone", lambda: PROGRESS not in annotations_of(invitations, "grace"), 20
    )
    second.wait_for_sync_pass()
    assert len(mas.tokens()) == 1
    assert len(smtp.messages) == 1
    assert invitations.status("grace")["phase"] == "Sent"
