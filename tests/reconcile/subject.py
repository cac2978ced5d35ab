"""The operator code under test, imported in one place.

The fakes and the harness import the operator's types only from here, so that a move of a name
inside `matrix_invite_operator` (issue 13, part 1) is a change of one line, not twenty.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import kopf
from matrix_invite_operator import handlers
from matrix_invite_operator import reconcile as reconcile_module
from matrix_invite_operator import sync as sync_module
from matrix_invite_operator.backends import AccountLookup, TokenBackend, TokenState
from matrix_invite_operator.backends.mas import RegistrationToken
from matrix_invite_operator.enrollment import invitation_name
from matrix_invite_operator.errors import (
    AuthentikUnavailable,
    BackendMisdirected,
    BackendRejected,
    BackendUnavailable,
    KubeConflict,
    KubeNotFound,
    KubeUnavailable,
    MailTemporaryError,
    OperatorError,
    PermanentError,
    SecretConflict,
    TokenNotFound,
    TransientError,
)
from matrix_invite_operator.homeserver import MatrixError
from matrix_invite_operator.models import GROUP, RESEND_ANNOTATION, VERSION
from matrix_invite_operator.onboarding import Onboarding
from matrix_invite_operator.ports import (
    EnrollmentInvite,
    EventSink,
    Invitation,
    InvitationMailer,
    KubeStore,
)
from matrix_invite_operator.reconcile import finalize, reconcile
from matrix_invite_operator.runtime import Dependencies
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.sync import StatusSync, WatchedInvitation

#: The Kopf handlers of handlers.py, called as Kopf calls them (keyword arguments body, memo,
#: retry); Kopf's decorators type them as its full callback protocol.
KopfHandler = Callable[..., Awaitable[None]]
on_change = cast(KopfHandler, handlers.invitation_changed)
on_resume = cast(KopfHandler, handlers.invitation_resumed)
on_delete = cast(KopfHandler, handlers.invitation_deleted)
HandledChanges = handlers.HandledChanges
ProgressStorage = handlers._ProgressStorage


def kopf_body(raw: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, raw))


__all__ = [
    "GROUP",
    "RESEND_ANNOTATION",
    "VERSION",
    "AccountLookup",
    "AuthentikUnavailable",
    "BackendMisdirected",
    "BackendRejected",
    "BackendUnavailable",
    "Dependencies",
    "EnrollmentInvite",
    "EventSink",
    "HandledChanges",
    "Invitation",
    "InvitationMailer",
    "KubeConflict",
    "KubeNotFound",
    "KubeStore",
    "KubeUnavailable",
    "MailTemporaryError",
    "MatrixError",
    "Onboarding",
    "OperatorError",
    "PermanentError",
    "ProgressStorage",
    "RegistrationToken",
    "SecretConflict",
    "Settings",
    "StatusSync",
    "TokenBackend",
    "TokenNotFound",
    "TokenState",
    "TransientError",
    "WatchedInvitation",
    "finalize",
    "handlers",
    "invitation_name",
    "kopf",
    "kopf_body",
    "on_change",
    "on_delete",
    "on_resume",
    "reconcile",
    "reconcile_module",
    "sync_module",
]
