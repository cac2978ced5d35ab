"""The operator code under test, imported in one place.

The fakes and the harness import the operator's types only from here, so that a move of a name
inside `matrix_invite_operator` (issue 13, part 1) is a change of one line, not twenty.
"""

from __future__ import annotations

from matrix_invite_operator import reconcile as reconcile_module
from matrix_invite_operator.backends import AccountLookup, TokenBackend, TokenState
from matrix_invite_operator.errors import (
    BackendRejected,
    BackendUnavailable,
    KubeConflict,
    KubeNotFound,
    KubeUnavailable,
    OperatorError,
    PermanentError,
    SecretConflict,
    TokenNotFound,
    TransientError,
)
from matrix_invite_operator.models import GROUP, RESEND_ANNOTATION, VERSION
from matrix_invite_operator.ports import EventSink, Invitation, InvitationMailer, KubeStore
from matrix_invite_operator.reconcile import finalize, reconcile
from matrix_invite_operator.runtime import Dependencies
from matrix_invite_operator.settings import Settings

__all__ = [
    "GROUP",
    "RESEND_ANNOTATION",
    "VERSION",
    "AccountLookup",
    "BackendRejected",
    "BackendUnavailable",
    "Dependencies",
    "EventSink",
    "Invitation",
    "InvitationMailer",
    "KubeConflict",
    "KubeNotFound",
    "KubeStore",
    "KubeUnavailable",
    "OperatorError",
    "PermanentError",
    "SecretConflict",
    "Settings",
    "TokenBackend",
    "TokenNotFound",
    "TokenState",
    "TransientError",
    "finalize",
    "reconcile",
    "reconcile_module",
]
