"""Pydantic models of the Invitation resource: its spec, its status and the condition shape.

These models and `crds/invitations.matrix-invite.dev.yaml` describe the same thing twice, once for
Python and once for the API server; `tests/unit/test_crd_models.py` fails when they drift.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator
from pydantic.alias_generators import to_camel

from .formats import (
    GO_DURATION_PATTERN,
    MAX_COMMON_ROOMS,
    ROOM_PATTERN,
    parse_go_duration,
    rfc3339,
)
from .locales import LOCALES, require_locale

GROUP = "matrix-invite.dev"
VERSION = "v1alpha1"
PLURAL = "invitations"
KIND = "Invitation"
RESEND_ANNOTATION = f"{GROUP}/resend"

# A bare address, no "Name <addr>" form. Non-ASCII is allowed (SMTPUTF8 addresses such as
# jörg@example.org exist); what SMTP cannot carry fails at send time with the relay's reply.
EMAIL_PATTERN = r'^[^\s@<>()\[\]\\,;:"]{1,64}@[^\s@<>()\[\]\\,;:"]+\.[^\s@<>()\[\]\\,;:"]+$'
SINGLE_LINE_PATTERN = r"^[^\r\n]*$"
# A display name goes into the To header: no control characters, and no "=?" that could open an
# RFC 2047 encoded word (one decoding to a line break could add a header; the mailer refuses
# those too, but this rejects them at `kubectl apply`). RE2 has no lookahead, hence the loops.
DISPLAY_NAME_PATTERN = r"^(?:[^\x00-\x1f\x7f=]|=+[^\x00-\x1f\x7f=?])*=*$"
# A Matrix user ID (@localpart:server); a room ID or alias is `formats.ROOM_PATTERN`.
MATRIX_USER_PATTERN = r"^@[^\s:]+:[^\s/]+$"
MAX_ROOMS = 20

RoomReference = Annotated[str, Field(max_length=255, pattern=ROOM_PATTERN)]

#: A moment in status: a datetime in Python, written once, as `formats.rfc3339` (UTC, whole
#: seconds, a trailing Z), whenever the model is serialised to JSON.
Timestamp = Annotated[dt.datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class InvitationSpec(_CamelModel):
    """What the admin commits to Git."""

    model_config = ConfigDict(frozen=True)

    email: str = Field(max_length=254, pattern=EMAIL_PATTERN)
    display_name: str | None = Field(None, max_length=256, pattern=DISPLAY_NAME_PATTERN)
    usage_limit: int = Field(1, ge=1, le=100)
    expires_at: dt.datetime | None = None
    valid_for: str | None = Field(None, max_length=32, pattern=GO_DURATION_PATTERN)
    revoked: bool = False
    # One of the template folders (locales.py); the CRD's enum lists the same.
    locale: str | None = Field(None, json_schema_extra={"enum": list(LOCALES)})
    resend: str | None = Field(None, max_length=64, pattern=SINGLE_LINE_PATTERN)
    rooms: list[RoomReference] | None = Field(None, max_length=MAX_ROOMS)
    room_membership: Literal["join", "invite"] | None = None
    account: str | None = Field(None, max_length=255, pattern=MATRIX_USER_PATTERN)

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str | None) -> str | None:
        return None if value is None else require_locale(value)

    @field_validator("rooms")
    @classmethod
    def _rooms_once(cls, rooms: list[str] | None) -> list[str] | None:
        if rooms is not None and len(set(rooms)) != len(rooms):
            raise ValueError("each room may be listed once")
        return rooms

    def expiry(self, created: dt.datetime, default_validity: dt.timedelta) -> dt.datetime:
        """When the token stops working: explicit, or counted from the Invitation's creation."""
        if self.expires_at is not None:
            return self.expires_at.astimezone(dt.UTC)
        validity = parse_go_duration(self.valid_for) if self.valid_for else default_validity
        return (created + validity).astimezone(dt.UTC)


class Phase(enum.StrEnum):
    PENDING = "Pending"
    SENT = "Sent"
    EXPIRED = "Expired"
    ACCEPTED = "Accepted"
    REVOKED = "Revoked"
    FAILED = "Failed"


class Condition(_CamelModel):
    """The `metav1.Condition` shape that kstatus and `kubectl wait --for=condition` read."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field(max_length=32768)
    last_transition_time: Timestamp
    observed_generation: int | None = Field(None, ge=0)


class RoomState(enum.StrEnum):
    JOINED = "Joined"
    INVITED = "Invited"
    FAILED = "Failed"


class RoomStatus(_CamelModel):
    """What became of one room of `spec.rooms` for the account."""

    room: str = Field(max_length=255)
    state: RoomState
    message: str | None = Field(None, max_length=1024)
    attempts: int = Field(0, ge=0)
    last_attempt_at: Timestamp | None = None


class AccountSearch(_CamelModel):
    """The last search for the account a token created: for which use count, how often, when."""

    uses: int = Field(ge=0)
    attempts: int = Field(0, ge=0)
    at: Timestamp


class EnrollmentState(enum.StrEnum):
    """Where the invitee's authentik invitation stands (`status.authentikInvitation.state`)."""

    ACTIVE = "Active"  # authentik has it; its link works
    # Gone after its link was mailed. authentik deletes a single-use invitation when the invitee
    # OPENS the link (the flow reaches its Invitation stage), not when the account is created;
    # an expiry or a deletion in authentik's admin looks the same.
    OPENED = "Opened"
    DELETED = "Deleted"  # deleted by the operator: revoked, new address, token spent or expired


class AuthentikInvitationStatus(_CamelModel):
    """The invitee's single-use authentik invitation: never its link or pk, only their handles."""

    name: str = Field(max_length=253)
    id: str | None = Field(None, max_length=64)  # `ak-` + a hash of the pk (ports.EnrollmentInvite)
    email: str | None = Field(None, max_length=254)  # the address it is bound to (fixed_data)
    state: EnrollmentState
    exists: bool
    mailed_id: str | None = Field(None, max_length=64)  # the invitation whose link was mailed
    expires_at: Timestamp | None = None
    checked_at: Timestamp | None = None
    message: str | None = Field(None, max_length=1024)


class InvitationStatus(_CamelModel):
    """What the operator reports. Never a token value: only MAS's id for it."""

    observed_generation: int | None = Field(None, ge=0)
    conditions: list[Condition] = Field(default_factory=list, max_length=8)
    phase: Phase | None = None
    message: str | None = Field(None, max_length=1024)
    secret_name: str | None = Field(None, max_length=253)
    token_id: str | None = Field(None, max_length=64)
    issued_to: str | None = Field(None, max_length=254)
    valid: bool | None = None
    times_used: int | None = Field(None, ge=0)
    pending_uses: int | None = Field(None, ge=0)
    usage_limit: int | None = Field(None, ge=0)
    expires_at: Timestamp | None = None
    expired: bool | None = None
    revoked: bool | None = None
    revocation_requested: bool | None = None
    last_used_at: Timestamp | None = None
    last_synced_at: Timestamp | None = None
    mail_sent_at: Timestamp | None = None
    mail_recipient: str | None = Field(None, max_length=254)
    mailed_token_id: str | None = Field(None, max_length=64)
    mails_sent: int | None = Field(None, ge=0)
    resend_handled: str | None = Field(None, max_length=400)
    account: str | None = Field(None, max_length=255)
    account_search: AccountSearch | None = None
    # spec.rooms and the rooms every accepted account joins (settings.onboarding_rooms)
    rooms: list[RoomStatus] | None = Field(None, max_length=MAX_ROOMS + MAX_COMMON_ROOMS)
    notice_posted: bool | None = None
    authentik_invitation: AuthentikInvitationStatus | None = None
    # The backend called the token invalid though our clock says it is not: the mail waits,
    # and the sync pass (not a handler's retry) hands it back to reconcile once they agree.
    waiting_for_backend_clock: bool | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
