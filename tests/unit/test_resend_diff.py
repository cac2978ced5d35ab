"""Kopf's update handler must see the resend annotation although it lives under Kopf's prefix."""

from __future__ import annotations

import json

import kopf
from matrix_invite_operator.handlers import _DiffBaseStorage, _ProgressStorage
from matrix_invite_operator.models import GROUP, RESEND_ANNOTATION


def essence(annotations: dict[str, str]) -> kopf.BodyEssence:
    body = kopf.Body(
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "Invitation",
            "metadata": {
                "name": "ada",
                "namespace": "default",
                "annotations": {
                    f"{GROUP}/kopf-managed": "yes",
                    f"{GROUP}/reconcile": json.dumps({"started": "2026-01-01T00:00:00"}),
                    f"{GROUP}/last-handled-configuration": "{}",
                    "example.org/owner": "team-a",
                    **annotations,
                },
            },
            "spec": {"email": "ada@example.org"},
            "status": {"phase": "Sent"},
        }
    )
    diffbase = _DiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    return _ProgressStorage(prefix=GROUP).clear(essence=diffbase.build(body=body))


def test_the_resend_annotation_stays_in_the_essence_and_kopfs_own_do_not() -> None:
    annotations = dict(essence({RESEND_ANNOTATION: "please"})["metadata"]["annotations"])

    assert annotations == {RESEND_ANNOTATION: "please", "example.org/owner": "team-a"}


def test_a_new_resend_value_is_a_change_the_same_value_is_not() -> None:
    before = essence({RESEND_ANNOTATION: "please"})

    # Kopf fires the update handler when the stored essence and the new one differ.
    assert essence({RESEND_ANNOTATION: "again"}) != before
    assert essence({}) != before
    assert essence({RESEND_ANNOTATION: "please"}) == before
