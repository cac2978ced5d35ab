"""The Invitation as reconcile sees it, and the interfaces ("ports") its steps talk through.

Below reconcile, status, sync, the mailer, the metrics and the stand-ins of `unconfigured.py`:
they all name the Invitation or one of these interfaces, and none of them needs reconcile for
it. The real implementations live elsewhere (`kube.KubeApi` and `kube.KubeEvents`,
`mail.invitation.SmtpInvitationMailer`, `runtime.Dependencies`); in-memory fakes stand in for
them under mypy strict. No I/O, no HTTP or SMTP library here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import SecretStr, ValidationError

from .backends import TokenBackend, TokenState
from .errors import InvalidSpecError
from .formats import parse_rfc3339
from .models import GROUP, KIND, RESEND_ANNOTATION, VERSION, InvitationSpec, InvitationStatus
from .settings import Settings


@dataclass(frozen=True)
class Invitation:
    """One Invitation as the API server sent it, parsed."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: dt.datetime
    spec: InvitationSpec
    status: InvitationStatus
    resend_annotation: str | None = None
    resource_version: str | None = None  # what status writes are conditioned on
    deleting: bool = False  # a deletionTimestamp is set: the finalizer's business, not ours

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Invitation:
        meta = body["metadata"]
        try:
            spec = InvitationSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            raise InvalidSpecError(f"spec is invalid at: {fields}") from None
        status = InvitationStatus.model_validate(_known_status(body.get("status") or {}))
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
            created=parse_rfc3339(meta["creationTimestamp"]),
            spec=spec,
            status=status,
            resend_annotation=(meta.get("annotations") or {}).get(RESEND_ANNOTATION),
            resource_version=meta.get("resourceVersion"),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def resend_request(self) -> str:
        """Both ways to ask for the mail again, as one comparable marker (not secret)."""
        return f"spec={self.spec.resend or ''};annotation={(self.resend_annotation or '')[:300]}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def reference(self) -> dict[str, Any]:
        """A minimal body naming this object, as Event posting expects it."""
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _known_status(raw: dict[str, Any]) -> dict[str, Any]:
    # Older operator versions or Kopf may leave fields we no longer model; ignore, don't fail.
    known = {f.alias or name for name, f in InvitationStatus.model_fields.items()}
    return {k: v for k, v in raw.items() if k in known}


def secret_name_for(invitation_name: str) -> str:
    """The Secret that holds an Invitation's token: `<name>-invite-token`, within 253 chars."""
    suffix = "-invite-token"
    return invitation_name[: 253 - len(suffix)] + suffix


class KubeStore(Protocol):
    """The Kubernetes calls of the steps and the status writer (`kube.KubeApi` in production).

    Errors are ours: `KubeNotFound`, `KubeConflict` (a failed resourceVersion precondition),
    `KubeUnavailable`, `SecretConflict` (a Secret of our name that is not ours).
    """

    async def get_invitation(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Invitation's body, or None if there is none of that name."""
        ...

    async def patch_invitation_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None
    ) -> dict[str, Any]:
        """Merge `status` in if the object is still at `resource_version` (else KubeConflict);
        returns the object as written."""
        ...

    async def read_token_secret(
        self, namespace: str, name: str, owner_uid: str
    ) -> SecretStr | None:
        """The token in our Secret, or None if there is no such Secret yet."""
        ...

    async def create_token_secret(
        self, namespace: str, name: str, token: SecretStr, owner: dict[str, Any]
    ) -> SecretStr:
        """Create the Secret; if it exists already (a retry), return what it holds instead."""
        ...

    async def replace_token(
        self, namespace: str, name: str, token: SecretStr, owner_uid: str
    ) -> None:
        """Put a new value into our existing Secret (KubeNotFound if there is none)."""
        ...


class EventSink(Protocol):
    """Kubernetes Events on an Invitation (reasons are CamelCase, messages carry no secrets)."""

    async def normal(self, invitation: Invitation, reason: str, message: str) -> None: ...

    async def warning(self, invitation: Invitation, reason: str, message: str) -> None: ...


class InvitationMailer(Protocol):
    """Renders and sends the invitation mail for one token."""

    async def send_invitation(
        self,
        invitation: Invitation,
        *,
        token: SecretStr,
        token_state: TokenState,
        enrollment_url: SecretStr | None = None,
    ) -> None:
        """`enrollment_url`: the invitee's own link to create their identity-provider account
        (an authentik invitation), the mail's first step; a secret like the token."""
        ...


@dataclass(frozen=True)
class Notice:
    """An Event to post once the status is written (no secrets, like every Event)."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Onboarded:
    """What onboarding changed in status (field name → new value; nothing else), and the
    Events to post once that is written."""

    changes: dict[str, Any]
    notices: list[Notice]

    def applied_to(self, status: InvitationStatus) -> InvitationStatus:
        return status.model_copy(update=self.changes)


class OnboardingSteps(Protocol):
    """After sign-up: who accepted, and their rooms (`onboarding.Onboarding`). `due` and
    `apply` take the Invitation with the status it is about to be written with."""

    def due(self, invitation: Invitation, now: dt.datetime) -> bool:
        """Whether `apply` would do anything: cheap enough for every Invitation on every pass."""
        ...

    async def apply(
        self, invitation: Invitation, token: TokenState | None, now: dt.datetime
    ) -> Onboarded:
        """What onboarding found and did, as changes to `invitation.status`."""
        ...

    def forget(self, uid: str) -> None:
        """The Invitation `uid` is deleted: drop what is kept of it in memory."""
        ...


class RegistrationGate(Protocol):
    """The one sign-up fact the steps act on (`sign_up.SignUpFacts` has it)."""

    @property
    def unprotected(self) -> str | None:
        """Why an invitation token protects nothing on this installation, if it does not."""
        ...


class SignUpSource(Protocol):
    """What MAS says about sign-up, as last read (`sign_up.SiteWatch`)."""

    @property
    def facts(self) -> RegistrationGate: ...


@dataclass(frozen=True)
class EnrollmentInvite:
    """One single-use authentik invitation, as the enrollment step sees it.

    `key` is authentik's pk: whoever holds it can enroll, so it is a secret like the token
    (only the mail carries it, as the link's `itoken`). `id` is what status may show instead.
    """

    key: SecretStr
    name: str
    email: str | None
    expires: dt.datetime

    @property
    def id(self) -> str:
        """A stable handle that does not reveal the key: `ak-` + 16 hex digits of its SHA-256."""
        digest = hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()
        return "ak-" + digest[:16]


class EnrollmentInvitations(Protocol):
    """authentik's invitation API, as the enrollment step uses it (`authentik.AuthentikClient`).

    Errors are ours: `AuthentikUnavailable` (with `may_have_taken_effect` when a create may have
    run anyway), `AuthentikForbidden`, `AuthentikRejected`, `AuthentikMisdirected`.
    """

    async def named(self, name: str) -> list[EnrollmentInvite]:
        """Every invitation of that name (authentik's names are not unique), expired included."""
        ...

    async def names(self, prefix: str) -> set[str]:
        """The names of every invitation whose name starts with `prefix` (one paged listing:
        the sync pass's view of which invitations still exist)."""
        ...

    async def create(
        self, name: str, *, email: str, display_name: str | None, expires: dt.datetime
    ) -> EnrollmentInvite:
        """A new single-use invitation for the enrollment flow, bound to the invitee."""
        ...

    async def delete(self, invite: EnrollmentInvite) -> None:
        """Delete it; one that is gone already counts as deleted."""
        ...

    def link(self, invite: EnrollmentInvite) -> SecretStr:
        """The enrollment link the invitee opens (it carries the key)."""
        ...


class Collaborators(Protocol):
    """What the steps and the sync pass talk to and share (`runtime.Dependencies`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def backend(self) -> TokenBackend: ...
    @property
    def kube(self) -> KubeStore: ...
    @property
    def mailer(self) -> InvitationMailer: ...
    @property
    def events(self) -> EventSink: ...
    @property
    def clock(self) -> Callable[[], dt.datetime]: ...
    @property
    def slots(self) -> asyncio.Semaphore:
        """Bounds the reconciles in flight."""
        ...

    @property
    def locks(self) -> MutableMapping[str, asyncio.Lock]:
        """One lock per Invitation uid (see `lock_for`)."""
        ...

    @property
    def site(self) -> SignUpSource | None:
        """None: nothing known about sign-up beyond the settings."""
        ...

    @property
    def onboarding(self) -> OnboardingSteps | None: ...

    @property
    def enrollment(self) -> EnrollmentInvitations | None:
        """authentik's invitations for the invitee's account; None: not configured."""
        ...

    def lock_for(self, invitation: Invitation) -> asyncio.Lock:
        """The Kopf handler and the sync pass may both act on one Invitation: serialise them."""
        ...
