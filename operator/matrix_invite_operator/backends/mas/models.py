"""The MAS Admin API's shapes: its endpoints, one request's description, and the resources
its JSON:API envelopes carry, as frozen pydantic models (token values as `SecretStr`)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

from matrix_invite_operator.backends import TokenState

ULID_PATTERN = r"^[0123456789ABCDEFGHJKMNPQRSTVWXYZ]{26}$"


class Endpoint(enum.StrEnum):
    """Admin API endpoints as path templates below the prefix: the `endpoint` metric label."""

    TOKENS = "/user-registration-tokens"
    ONE = "/user-registration-tokens/{id}"
    REVOKE = "/user-registration-tokens/{id}/revoke"
    UNREVOKE = "/user-registration-tokens/{id}/unrevoke"
    VERSION = "/version"
    SITE_CONFIG = "/site-config"
    UPSTREAM_PROVIDERS = "/upstream-oauth-providers"
    USER_EMAILS = "/user-emails"
    USER = "/users/{id}"
    USER_BY_NAME = "/users/by-username/{username}"
    PERSONAL_SESSIONS = "/personal-sessions"
    PERSONAL_SESSION_REVOKE = "/personal-sessions/{id}/revoke"


class MasModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


Model = TypeVar("Model", bound=MasModel)


class SelfLinks(MasModel):
    self_: str = Field(alias="self")


class RegistrationTokenAttributes(MasModel):
    # The spec requires only these four; the rest may be left out, which means null.
    token: SecretStr
    valid: bool
    times_used: int
    created_at: AwareDatetime
    usage_limit: int | None = None
    last_used_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    revoked_at: AwareDatetime | None = None


class RegistrationToken(MasModel):
    """One `user-registration_token` resource as MAS returns it."""

    type: Literal["user-registration_token"]
    id: str = Field(pattern=ULID_PATTERN)
    attributes: RegistrationTokenAttributes
    links: SelfLinks

    def to_state(self) -> TokenState:
        a = self.attributes
        return TokenState(
            id=self.id,
            token=a.token,
            valid=a.valid,
            usage_limit=a.usage_limit,
            times_used=a.times_used,
            created_at=a.created_at,
            last_used_at=a.last_used_at,
            expires_at=a.expires_at,
            revoked_at=a.revoked_at,
        )


class RegistrationTokenResponse(MasModel):
    data: RegistrationToken
    links: SelfLinks


class PaginationLinks(MasModel):
    self_: str = Field(alias="self")
    next: str | None = None
    prev: str | None = None


class PaginationMeta(MasModel):
    count: int | None = None


class ListPage(MasModel):
    links: PaginationLinks


Page = TypeVar("Page", bound=ListPage)


class RegistrationTokenPage(ListPage):
    data: list[RegistrationToken] | None = None
    meta: PaginationMeta | None = None


class VersionResponse(MasModel):
    version: str


class SiteConfig(MasModel):
    """What `GET /site-config` says about sign-up. Older MAS leaves out newer flags."""

    server_name: str
    password_registration_enabled: bool
    password_registration_email_required: bool = True
    # MAS 1.19+; older MAS knows only the deprecated `registration_token_required`.
    password_registration_token_required: bool | None = None
    registration_token_required: bool = False
    captcha_enabled: bool = False

    @property
    def token_required(self) -> bool:
        """Whether a password sign-up needs a registration token (either key, as MAS ORs them)."""
        return bool(self.password_registration_token_required) or self.registration_token_required


class UpstreamProviderAttributes(MasModel):
    human_name: str | None = None
    issuer: str | None = None
    disabled_at: AwareDatetime | None = None
    registration_token_required: bool


class UpstreamProvider(MasModel):
    """One upstream OAuth 2.0 provider (an `upstream_oauth2.providers` entry) as MAS lists it."""

    id: str = Field(pattern=ULID_PATTERN)
    attributes: UpstreamProviderAttributes

    @property
    def name(self) -> str:
        a = self.attributes
        return a.human_name or a.issuer or self.id


class UpstreamProviderPage(ListPage):
    data: list[UpstreamProvider] | None = None


class UserEmailAttributes(MasModel):
    user_id: str = Field(pattern=ULID_PATTERN)
    email: str
    created_at: AwareDatetime


class UserEmail(MasModel):
    id: str
    attributes: UserEmailAttributes


class UserEmailPage(MasModel):
    data: list[UserEmail] | None = None


class UserAttributes(MasModel):
    username: str
    created_at: AwareDatetime
    deactivated_at: AwareDatetime | None = None


class User(MasModel):
    id: str = Field(pattern=ULID_PATTERN)
    attributes: UserAttributes


class UserResponse(MasModel):
    data: User


class PersonalSessionAttributes(MasModel):
    # Only the create answer carries the token; it is never shown again.
    access_token: SecretStr | None = None
    expires_at: AwareDatetime | None = None
    revoked_at: AwareDatetime | None = None


class PersonalSession(MasModel):
    id: str = Field(pattern=ULID_PATTERN)
    attributes: PersonalSessionAttributes


class PersonalSessionResponse(MasModel):
    data: PersonalSession


@dataclasses.dataclass(frozen=True)
class Call:
    method: str
    endpoint: Endpoint
    path: str
    token_id: str | None = None
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None
    # The token value sent in the body: scrubbed from any error text MAS echoes back.
    secret: str | None = None
    # What a 404 means for a call about something other than a token (None: a missing API).
    missing: str | None = None
