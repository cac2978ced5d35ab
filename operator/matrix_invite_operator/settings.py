"""The operator's one typed configuration object, read from `MATRIX_INVITE_*` environment variables.

Credentials come either as a value or, preferably, as a file mounted from a Secret
(`..._FILE` variables); the file wins when both are set so that a stale value in a Deployment
cannot shadow a rotated Secret. The clients get credentials as a `SecretSource` and read the file
again whenever they use it, so a rotated Secret takes effect without a restart once the kubelet
has updated the mounted file. Nothing here is ever read from an Invitation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError
from .formats import MAX_COMMON_ROOMS, ROOM_PATTERN, parse_go_duration
from .locales import require_locale

RoomReference = Annotated[str, Field(max_length=255, pattern=ROOM_PATTERN)]

SecretSource = Callable[[], SecretStr]
"""A credential read when it is used: `Settings.mas_client_secret_value` and its siblings."""


def current_secret(secret: SecretStr | SecretSource) -> SecretStr:
    """The credential as it is now (a file-backed source reads its file again)."""
    return secret if isinstance(secret, SecretStr) else secret()


def _duration(value: object) -> object:
    return parse_go_duration(value) if isinstance(value, str) else value


class Settings(BaseSettings):
    """Everything the operator needs to know at startup."""

    model_config = SettingsConfigDict(
        env_prefix="MATRIX_INVITE_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # --- token backend: which one, then MAS Admin API or Synapse admin API ---
    backend: Literal["mas", "synapse"] = Field(
        "mas", description="Where registration tokens live: MAS, or Synapse without MAS"
    )
    mas_url: AnyHttpUrl | None = Field(
        None, description="Base URL of MAS's listener serving `adminapi` (e.g. http://mas:8081)"
    )
    mas_token_endpoint: AnyHttpUrl | None = Field(
        None, description="OAuth token endpoint; discovered from MAS when unset"
    )
    mas_client_id: str | None = None
    mas_client_secret: SecretStr | None = None
    mas_client_secret_file: Path | None = None
    mas_client_auth_method: Literal["client_secret_basic", "client_secret_post"] = (
        "client_secret_basic"
    )
    mas_ca_bundle: Path | None = Field(
        None, description="PEM bundle to trust instead of the system CAs"
    )
    synapse_url: AnyHttpUrl | None = Field(
        None, description="Base URL of Synapse's client listener (the admin API lives there)"
    )
    synapse_admin_token: SecretStr | None = None
    synapse_admin_token_file: Path | None = None
    synapse_ca_bundle: Path | None = Field(
        None, description="PEM bundle to trust for Synapse; MATRIX_INVITE_MAS_CA_BUNDLE if unset"
    )
    http_timeout_seconds: float = Field(10.0, gt=0, le=300)
    mas_sign_up: Literal["password", "upstream"] | None = Field(
        None,
        description="How invitees sign up in MAS's web UI: password registration, or through an "
        "upstream identity provider (the mail's steps follow); unset: what MAS's site-config "
        "says; ignored with the Synapse backend",
    )
    mas_upstream_provider_name: str | None = Field(
        None,
        max_length=100,
        description="The provider whose steps the mail describes, by its name in MAS (on its "
        '"Continue with ..." button where MAS shows buttons), e.g. Authentik; '
        "unset: the name MAS gives its only enabled provider",
    )

    # --- the invitee's account at authentik (the upstream provider), optional ---
    authentik_url: AnyHttpUrl | None = Field(
        None,
        description="authentik's base URL (e.g. https://auth.example.org); set: each Invitation "
        "gets a single-use authentik invitation, and the mail's first step is its enrollment link",
    )
    authentik_api_token: SecretStr | None = None
    authentik_api_token_file: Path | None = Field(
        None,
        description="File holding an authentik API token (intent 'api') of the operator's "
        "service account, which may view, add and delete invitations",
    )
    authentik_flow_slug: str | None = Field(
        None,
        max_length=255,
        pattern=r"^[-a-zA-Z0-9_]+$",
        description="Slug of the invitation enrollment flow (it must contain an Invitation stage)",
    )
    authentik_ca_bundle: Path | None = Field(
        None, description="PEM bundle to trust for authentik instead of the system CAs"
    )
    account_enrollment_url: AnyHttpUrl | None = Field(
        None,
        description="Without authentik settings: where invitees without an account at the "
        "upstream provider get one (the mail offers it)",
    )
    account_contact: str | None = Field(
        None,
        max_length=200,
        description="Without authentik settings or an enrollment URL: whom invitees without an "
        "account at the upstream provider ask for one, e.g. 'the IT desk (it@example.org)'",
    )

    # --- onboarding: the account a token created, and the rooms it joins ---
    homeserver_url: AnyHttpUrl | None = Field(
        None,
        description="Synapse's client API, for joining accounts to rooms; "
        "MATRIX_INVITE_SYNAPSE_URL if unset",
    )
    onboarding_user: str | None = Field(
        None,
        max_length=255,
        pattern=r"^[a-z0-9._=/+-]+$",
        description="MAS username whose short personal sessions join accounts to rooms",
    )
    onboarding_session_seconds: int = Field(
        300, ge=30, le=3600, description="Lifetime of one personal session (revoked after use)"
    )
    room_membership: Literal["join", "invite"] = Field(
        "join", description="Join accounts to spec.rooms, or invite them; per Invitation too"
    )
    notice_room: str | None = Field(
        None,
        max_length=255,
        pattern=ROOM_PATTERN,
        description="Room where the onboarding user posts one notice per accepted invitation",
    )
    onboarding_rooms: Annotated[list[RoomReference], NoDecode] = Field(
        default_factory=list,
        max_length=MAX_COMMON_ROOMS,
        description="Rooms and spaces (IDs or aliases, comma-separated) every accepted account "
        "joins, before its spec.rooms; shown in status.rooms like them",
    )

    # --- mail ---
    smtp_host: str = "localhost"
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_tls: Literal["starttls", "implicit", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_password_file: Path | None = None
    smtp_ca_bundle: Path | None = None
    smtp_allow_insecure_auth: bool = Field(
        False,
        description="Allow SMTP login without TLS (never across a network)",
    )
    smtp_timeout_seconds: float = Field(30.0, gt=0, le=300)
    mail_from: str = Field("invitations@localhost", max_length=254)
    mail_from_name: str | None = Field(None, max_length=128)
    mail_template_dir: Path | None = None
    mail_timezone: str = "UTC"
    default_locale: str = Field("en", description="A folder of the mail templates: en, de")
    mail_rate_per_minute: int = Field(
        30, ge=0, le=60000, description="Mails per minute at most, evenly spaced; 0 = no limit"
    )

    # --- what the mail says ---
    registration_url: str = Field(
        "https://auth.example.org/register",
        description="Where invitees sign up; may contain {token} and {email} placeholders",
    )
    server_name: str | None = Field(
        None,
        max_length=253,
        description="The Matrix server name the mail names; unset: the one MAS serves "
        "(required with the Synapse backend)",
    )
    element_web_url: AnyHttpUrl | None = Field(
        None, description="Where the mail tells invitees to log in with Element Web after sign-up"
    )
    inviter_name: str | None = Field(None, max_length=128)

    # --- the invite page (`serve-invite-page`, a Deployment of its own without credentials) ---
    invite_page_url: AnyHttpUrl | None = Field(
        None,
        description="Public base URL of the invite page, e.g. https://invite.example.org; set: "
        "the mail's main call to action is <url>/<locale>/#<token> (the token in the fragment)",
    )
    invite_page_port: int = Field(
        8080, ge=1, le=65535, description="Where `serve-invite-page` listens (on bind_address)"
    )
    invite_page_email_code: bool = Field(
        True,
        description="The page server cannot read MAS's site-config (it has no credentials): "
        "whether MAS's password sign-up emails a 6-digit code",
    )
    invite_page_captcha: bool = Field(
        False, description="Whether MAS's sign-up asks for a CAPTCHA (for the page's steps)"
    )
    invite_page_mas_version: str | None = Field(
        None,
        max_length=64,
        description="MAS's version, e.g. 1.22.0, for the page's version check: from a MAS "
        "release that pre-fills tokens on, the continue button carries the token",
    )

    # --- behaviour ---
    default_validity: Annotated[dt.timedelta, NoDecode] = dt.timedelta(days=7)
    max_validity: Annotated[dt.timedelta, NoDecode] = dt.timedelta(days=90)
    # The full pass: every page of MAS's token list (ceil(N / 100) requests). 120 s, not 60, and
    # the acceptance pass every 12 s: at N = 1,000 both, with the site config's two requests per
    # interval and an access token per 5 minutes, cost MAS under 0.2 requests a second (issue 24).
    sync_interval_seconds: float = Field(120.0, ge=1, le=86400)
    recent_sync_interval_seconds: float = Field(
        12.0,
        ge=0,
        le=3600,
        description="How often one request lists MAS's newest tokens while Invitations await "
        "sign-up, so that an acceptance shows within seconds; 0 turns it off",
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch; empty means the whole cluster"
    )
    retry_base_seconds: float = Field(
        5.0, gt=0, le=600, description="First retry delay after an outage; doubles each retry"
    )
    retry_max_seconds: float = Field(300.0, gt=0, le=3600)
    # Memory in a burst (docs/performance.md): a Kopf worker waiting for its turn holds about
    # 60 KB (its event, body, handler frames); an Invitation waiting in Kopf's line, only its
    # event and queue. 200 keeps the 10 reconcile slots busy with room to spare.
    worker_limit: int = Field(
        200,
        ge=1,
        le=1_000_000,
        description="How many Invitations are handled at once; the events of the others wait "
        "in line",
    )
    log_format: Literal["plain", "json"] = "plain"
    bind_address: str = Field("0.0.0.0", description="Where /healthz and /metrics listen")  # noqa: S104
    liveness_port: int = Field(8080, ge=0, le=65535, description="0 turns the probe endpoint off")
    metrics_port: int = Field(9090, ge=0, le=65535)
    lease_name: str = Field(
        "",
        max_length=253,
        description="Lease that elects the one active copy; empty runs without election",
    )
    lease_namespace: str = Field(
        "", max_length=63, description="Namespace of the Lease; empty: the first watched one"
    )

    def lease_location(self) -> tuple[str, str] | None:
        """(namespace, name) of the election Lease, or None when election is off."""
        if not self.lease_name:
            return None
        namespace = self.lease_namespace or (self.namespaces[0] if self.namespaces else "")
        if not namespace:
            raise ConfigurationError(
                "MATRIX_INVITE_LEASE_NAME needs MATRIX_INVITE_LEASE_NAMESPACE when the operator "
                "watches the whole cluster"
            )
        return namespace, self.lease_name

    def homeserver_client_url(self) -> str | None:
        """Where joins and notices go: the homeserver URL, else Synapse's (Synapse backend)."""
        url = self.homeserver_url or (self.synapse_url if self.backend == "synapse" else None)
        return str(url) if url is not None else None

    @field_validator("default_validity", "max_validity", mode="before")
    @classmethod
    def _parse_duration(cls, value: object) -> object:
        return _duration(value)

    @field_validator("default_locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        return require_locale(value)

    @field_validator("namespaces", "onboarding_rooms", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("onboarding_rooms")
    @classmethod
    def _rooms_once(cls, rooms: list[str]) -> list[str]:
        if len(set(rooms)) != len(rooms):
            raise ValueError("a room is listed twice")
        return rooms

    @field_validator(
        "mail_from_name",
        "inviter_name",
        "server_name",
        "mail_from",
        "mas_upstream_provider_name",
        "account_contact",
    )
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("must be a single line")
        return value

    @field_validator(
        "mas_upstream_provider_name",
        "server_name",
        "mas_sign_up",
        "onboarding_user",
        "notice_room",
        "authentik_flow_slug",
        "account_contact",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # An empty variable (a chart value left "") means "not configured", not a blank label.
        if isinstance(value, str):
            return value.strip() or None
        return value

    @model_validator(mode="after")
    def _validity_bounds(self) -> Settings:
        if self.default_validity > self.max_validity:
            raise ValueError("default_validity must not exceed max_validity")
        return self

    # --- credentials: each call reads the file again, so these bound methods are SecretSources ---

    def mas_client_secret_value(self) -> SecretStr:
        return _secret_from(
            "MAS client secret",
            self.mas_client_secret,
            self.mas_client_secret_file,
            env="MATRIX_INVITE_MAS_CLIENT_SECRET_FILE",
        )

    def synapse_admin_token_value(self) -> SecretStr:
        return _secret_from(
            "Synapse admin access token",
            self.synapse_admin_token,
            self.synapse_admin_token_file,
            env="MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE",
        )

    def authentik_api_token_value(self) -> SecretStr:
        return _secret_from(
            "authentik API token",
            self.authentik_api_token,
            self.authentik_api_token_file,
            env="MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE",
        )

    @property
    def authentik_enabled(self) -> bool:
        """Whether the invitee's account is made at authentik (`MATRIX_INVITE_AUTHENTIK_URL`)."""
        return self.authentik_url is not None

    def require_authentik(self) -> None:
        """With authentik's URL set, the token and the flow's slug must be there too: one
        sentence naming what is missing (reads the token file once)."""
        if not self.authentik_enabled:
            return
        missing = []
        if self.authentik_api_token is None and self.authentik_api_token_file is None:
            missing.append("MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE (or _TOKEN)")
        if self.authentik_flow_slug is None:
            missing.append("MATRIX_INVITE_AUTHENTIK_FLOW_SLUG")
        if missing:
            raise ConfigurationError(
                "authentik invitations (MATRIX_INVITE_AUTHENTIK_URL is set) need "
                + ", ".join(missing)
            )
        self.authentik_api_token_value()

    def smtp_password_value(self) -> SecretStr:
        return _secret_from(
            "SMTP password",
            self.smtp_password,
            self.smtp_password_file,
            env="MATRIX_INVITE_SMTP_PASSWORD_FILE",
        )

    def require_backend(self) -> None:
        """Fail at startup, with one clear sentence, when the backend cannot be reached at all.

        Checks the settings of the chosen backend only, and reads its credential file once.
        """
        if self.backend == "synapse":
            missing = [] if self.synapse_url is not None else ["MATRIX_INVITE_SYNAPSE_URL"]
            if self.synapse_admin_token is None and self.synapse_admin_token_file is None:
                missing.append("MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE (or _TOKEN)")
            if missing:
                raise ConfigurationError("the Synapse backend needs " + ", ".join(missing))
            self.synapse_admin_token_value()
            return
        missing = [
            name
            for name, value in (
                ("MATRIX_INVITE_MAS_URL", self.mas_url),
                ("MATRIX_INVITE_MAS_CLIENT_ID", self.mas_client_id),
            )
            if not value
        ]
        if self.mas_client_secret is None and self.mas_client_secret_file is None:
            missing.append("MATRIX_INVITE_MAS_CLIENT_SECRET_FILE (or _SECRET)")
        if missing:
            raise ConfigurationError("the MAS backend needs " + ", ".join(missing))
        self.mas_client_secret_value()


def _secret_from(what: str, value: SecretStr | None, path: Path | None, *, env: str) -> SecretStr:
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the {what} from {path} ({env}): {exc.strerror}"
            ) from exc
        if not text:
            raise ConfigurationError(f"the {what} file {path} ({env}) is empty")
        return SecretStr(text)
    if value is not None and value.get_secret_value():
        return value
    raise ConfigurationError(f"no {what} configured: set {env}")
