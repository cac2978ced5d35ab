"""Kopf's diff base, derived from status (handlers.HandledChanges): what Kopf takes as handled.

`fetch` returning None makes Kopf call the create handler (reconcile); an essence equal to
`build`'s means nothing new (at a process start: resume). Kopf's real storage classes and
bodies, no cluster: the integration tests (test_handled_changes.py) run the same through Kopf.
"""

from __future__ import annotations

import json
from typing import Any

import kopf
from matrix_invite_operator.handlers import (
    RECONCILE_HANDLER,
    HandledChanges,
    _ProgressStorage,
)
from matrix_invite_operator.models import GROUP, RESEND_ANNOTATION

MARKER = f"{GROUP}/kopf-managed"
PROGRESS = f"{GROUP}/{RECONCILE_HANDLER}"


def body(
    *,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    deleting: bool = False,
) -> kopf.Body:
    metadata: dict[str, Any] = {
        "name": "ada",
        "namespace": "default",
        "uid": "uid-ada",
        "generation": generation,
        "creationTimestamp": "2026-06-01T12:00:00Z",
        "annotations": dict(annotations or {}),
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-06-01T13:00:00Z"
    raw = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "Invitation",
        "metadata": metadata,
        "spec": spec or {"email": "ada@example.org"},
        "status": status or {},
    }
    return kopf.Body(raw)  # type: ignore[arg-type]


def sent(generation: int = 1, **more: Any) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": "Sent", **more}


def storage() -> HandledChanges:
    return HandledChanges(_ProgressStorage(prefix=GROUP))


def handled(changes: HandledChanges, subject: kopf.Body) -> bool:
    old = changes.fetch(body=subject)
    return old is not None and old == changes.build(body=subject)


def test_a_new_invitation_is_not_handled() -> None:
    assert storage().fetch(body=body()) is None


def test_status_of_the_current_generation_says_handled_an_older_one_does_not() -> None:
    changes = storage()

    assert handled(changes, body(status=sent(1)))
    assert changes.fetch(body=body(generation=2, status=sent(1))) is None


def test_a_progress_record_means_a_retry_is_under_way() -> None:
    # A reconcile that failed wrote observedGeneration with its Reconciling condition; Kopf's
    # record of the retry (also one an earlier process wrote) keeps it unhandled.
    record = json.dumps({"started": "2026-06-01T12:00:00", "retries": 1, "purpose": "create"})

    assert storage().fetch(body=body(status=sent(1), annotations={PROGRESS: record})) is None


def test_a_new_resend_request_is_a_change_the_handled_one_is_not() -> None:
    changes = storage()
    handled_please = "spec=;annotation=please"

    asked = body(status=sent(1, resendHandled=None), annotations={RESEND_ANNOTATION: "please"})
    answered = body(
        status=sent(1, resendHandled=handled_please), annotations={RESEND_ANNOTATION: "please"}
    )
    by_spec = body(
        status=sent(1, resendHandled=handled_please),
        annotations={RESEND_ANNOTATION: "please"},
        spec={"email": "ada@example.org", "resend": "1"},
    )
    assert changes.fetch(body=asked) is None
    assert handled(changes, answered)
    assert changes.fetch(body=by_spec) is None
    # Removing the annotation asks for nothing.
    assert handled(changes, body(status=sent(1, resendHandled=handled_please)))


def test_pending_or_failed_is_not_handled_unless_waiting_for_the_backends_clock() -> None:
    # A reconcile that failed leaves Pending (or Failed): should Kopf's record of the retry be
    # missing (its own PATCH failed), the change is still not taken as handled.
    changes = storage()

    assert changes.fetch(body=body(status={"observedGeneration": 1, "phase": "Pending"})) is None
    assert changes.fetch(body=body(status={"observedGeneration": 1, "phase": "Failed"})) is None
    waiting = {"observedGeneration": 1, "phase": "Pending", "waitingForBackendClock": True}
    assert handled(changes, body(status=waiting))


def test_a_resend_request_no_mail_can_answer_is_handled() -> None:
    changes = storage()
    please = {RESEND_ANNOTATION: "please"}

    accepted = body(status={"observedGeneration": 1, "phase": "Accepted"}, annotations=please)
    waiting = body(status=sent(1, waitingForBackendClock=True), annotations=please)
    assert handled(changes, accepted)
    assert handled(changes, waiting)


def test_what_this_process_handled_holds_against_the_older_events_that_follow() -> None:
    changes = storage()
    # The events of the handler's own status writes come after it returned: the first showed
    # only the token id, no observedGeneration yet.
    changes.handled(body(status={}))

    assert handled(changes, body(status={"tokenId": "01J"}))
    assert len(changes) == 1
    # An edit is a new change, whatever this process remembers.
    assert changes.fetch(body=body(generation=2, status={"tokenId": "01J"})) is None
    # So is a resend request made after the handler read the Invitation.
    asked = body(status={"tokenId": "01J"}, annotations={RESEND_ANNOTATION: "please"})
    assert changes.fetch(body=asked) is None
    # Once an event's status shows it handled, nothing is kept for it.
    assert handled(changes, body(status=sent(1)))
    assert len(changes) == 0


def test_deletion_is_left_to_kopf_and_forgets_the_invitation() -> None:
    changes = storage()
    changes.handled(body(status={}))

    assert changes.fetch(body=body(status={}, deleting=True)) is not None
    assert len(changes) == 0
    changes.handled(body(status={}, deleting=True))
    assert len(changes) == 0


def test_an_invitation_an_older_version_handled_is_judged_by_its_status() -> None:
    # Kopf's old diff base (an annotation, marker beside it) is no longer read: an edit made
    # while the operator was upgraded shows in observedGeneration, a resend in resendHandled.
    old = {
        f"{GROUP}/last-handled-configuration": '{"spec":{"email":"ada@example.org"}}\n',
        MARKER: "yes",
    }
    changes = storage()

    assert handled(changes, body(status=sent(1), annotations=old))
    assert changes.fetch(body=body(generation=2, status=sent(1), annotations=old)) is None
    resend = {**old, RESEND_ANNOTATION: "please"}
    assert changes.fetch(body=body(status=sent(1), annotations=resend)) is None


def test_store_writes_nothing() -> None:
    changes = storage()
    subject = body()
    patch = kopf.Patch()

    changes.store(body=subject, patch=patch, essence=changes.build(body=subject))

    assert not patch


def test_the_essence_is_the_spec_and_the_resend_annotation() -> None:
    subject = body(
        status=sent(1),
        annotations={RESEND_ANNOTATION: "please", "example.org/owner": "team-a"},
    )

    assert storage().build(body=subject) == {
        "spec": {"email": "ada@example.org"},
        "metadata": {"annotations": {RESEND_ANNOTATION: "please"}},
    }


def test_a_final_progress_record_comes_without_kopfs_marker_a_retry_with_it() -> None:
    progress = _ProgressStorage(prefix=GROUP)
    key = kopf.HandlerId(RECONCILE_HANDLER)

    done = kopf.Patch()
    progress.store(key=key, record={"success": True, "retries": 1}, body=body(), patch=done)
    progress.purge(key=key, body=body(), patch=done)
    assert not done  # nothing left to write after a handler that succeeded at once

    retry = kopf.Patch()
    progress.store(key=key, record={"retries": 1, "delayed": "x"}, body=body(), patch=retry)
    assert set(retry["metadata"]["annotations"]) == {PROGRESS, MARKER}

    failed = kopf.Patch()
    progress.store(
        key=key, record={"failure": True}, body=body(annotations={MARKER: "yes"}), patch=failed
    )
    assert set(failed["metadata"]["annotations"]) == {PROGRESS}


def test_the_resend_annotation_stays_in_a_cleared_essence() -> None:
    essence: Any = {
        "spec": {},
        "metadata": {"annotations": {RESEND_ANNOTATION: "please", PROGRESS: "{}"}},
    }

    cleared = _ProgressStorage(prefix=GROUP).clear(essence=essence)

    assert cleared["metadata"]["annotations"] == {RESEND_ANNOTATION: "please"}
