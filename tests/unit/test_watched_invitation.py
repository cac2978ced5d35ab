"""The registry keeps what the sync pass reads of an Invitation, and nothing else."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from matrix_invite_operator.models import RESEND_ANNOTATION
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.sync import WatchedInvitation


def full_body(**status: Any) -> dict[str, Any]:
    """An Invitation as the API server sends it in a watch event."""
    return {
        "apiVersion": "matrix-invite.dev/v1alpha1",
        "kind": "Invitation",
        "metadata": {
            "name": "alice",
            "namespace": "matrix",
            "uid": "01adfee7-7375-475c-b7bd-42448eb97e4f",
            "generation": 3,
            "resourceVersion": "1320",
            "creationTimestamp": "2026-11-27T10:03:01Z",
            "finalizers": ["matrix-invite.dev/revoke-token"],
            "labels": {"team": "ops"},
            "annotations": {
                RESEND_ANNOTATION: "2026-11-27",
                "matrix-invite.dev/last-handled-configuration": '{"spec":{"email":"a@b.org"}}',
                "kubectl.kubernetes.io/last-applied-configuration": "{}" * 200,
            },
            "managedFields": [{"manager": "kopf", "fieldsV1": {"f:metadata": {}}}] * 3,
        },
        "spec": {"email": "alice@example.org", "usageLimit": 2, "validFor": "168h"},
        "status": {
            "phase": "Sent",
            "observedGeneration": 3,
            "tokenId": "01JTOKEN",
            "expiresAt": "2026-12-04T10:03:01Z",
            "expired": False,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Sent",
                    "message": "Invitation mailed",
                    "observedGeneration": 3,
                    "lastTransitionTime": "2026-11-27T10:03:04Z",
                }
            ],
            **status,
        },
    }


def test_the_sync_pass_reads_the_same_invitation_from_the_packed_entry() -> None:
    body = full_body()
    assert Invitation.from_body(WatchedInvitation.from_body(body).body()) == Invitation.from_body(
        body
    )


def test_what_nothing_reads_is_not_kept() -> None:
    packed = WatchedInvitation.from_body(full_body()).body()
    assert set(packed["metadata"]) == {
        "name",
        "namespace",
        "uid",
        "generation",
        "resourceVersion",  # what the sync pass compares with a fresh read before it writes
        "creationTimestamp",
        "annotations",
    }
    assert packed["metadata"]["annotations"] == {RESEND_ANNOTATION: "2026-11-27"}
    # The point of packing: a fraction of the JSON the API server sent.
    assert len(WatchedInvitation.from_body(full_body()).packed) < len(json.dumps(full_body())) / 2


def test_deletion_is_kept_so_the_pass_can_skip_it() -> None:
    body = full_body()
    body["metadata"]["deletionTimestamp"] = "2026-11-28T00:00:00Z"
    assert WatchedInvitation.from_body(body).body()["metadata"]["deletionTimestamp"]


def test_only_a_sent_invitation_not_yet_expired_has_an_expiry_to_watch() -> None:
    expires = dt.datetime(2026, 12, 4, 10, 3, 1, tzinfo=dt.UTC)
    assert WatchedInvitation.from_body(full_body()).expires_at == expires
    assert WatchedInvitation.from_body(full_body(expired=True)).expires_at is None
    assert WatchedInvitation.from_body(full_body(phase="Accepted")).expires_at is None
    assert WatchedInvitation.from_body(full_body(expiresAt=None)).expires_at is None
    assert WatchedInvitation.from_body(full_body(phase="Pending")).phase == "Pending"
    assert WatchedInvitation.from_body({"metadata": {"name": "new"}}).phase is None


def sent_body(index: int) -> dict[str, Any]:
    """A settled Invitation as the operator leaves it, every status field written."""
    name, email = f"guest-{index:05d}", f"guest-{index:05d}@example.org"
    sentence = f"Invitation mailed to {email}; the token is valid until 2026-12-13T04:46:37Z"
    conditions = [
        ("Ready", "True", "Sent", sentence),
        ("Reconciling", "False", "Reconciled", "Nothing left to do"),
        ("Stalled", "False", "NotStalled", "No error that needs a change"),
    ]
    body = full_body(
        conditions=[
            {
                "type": kind,
                "status": state,
                "reason": reason,
                "message": message,
                "observedGeneration": 3,
                "lastTransitionTime": "2026-12-06T04:48:39Z",
            }
            for kind, state, reason, message in conditions
        ],
        expiresAt="2026-12-13T04:46:37Z",
        issuedTo=email,
        lastSyncedAt="2026-12-06T04:48:39Z",
        mailRecipient=email,
        mailSentAt="2026-12-06T04:48:39Z",
        mailedTokenId=f"01M94TXCRD01MMXBB6T1A{index:05d}",
        mailsSent=1,
        message=sentence,
        resendHandled="spec=;annotation=",
        revoked=False,
        secretName=f"{name}-invite-token",
        timesUsed=0,
        tokenId=f"01M94TXCRD01MMXBB6T1A{index:05d}",
        usageLimit=1,
        valid=True,
    )
    body["metadata"]["name"] = name
    body["spec"] = {"email": email, "displayName": f"Guest {index}", "usageLimit": 1}
    return body


def test_a_settled_invitation_is_kept_in_a_few_hundred_bytes() -> None:
    """20,000 of them are in memory at once (issue 24): 1.4 KB of JSON each was 28 MB."""
    for index in (7, 12345):
        body = sent_body(index)
        watched = WatchedInvitation.from_body(body)
        assert len(watched.packed) < 400, len(watched.packed)
        unpacked = watched.body()
        assert unpacked["spec"] == body["spec"]
        assert unpacked["status"] == body["status"]
        assert Invitation.from_body(unpacked) == Invitation.from_body(body)
