"""authentik's invitation API: the client behind the invitee's enrollment link (optional).

`AuthentikClient` speaks HTTP to `/api/v3/stages/invitation/invitations/` (list by name, create,
delete) and reads the enrollment flow (`/api/v3/flows/instances/<slug>/`) over one injected
`httpx.AsyncClient` whose lifetime, TLS and timeouts belong to the caller; the API token goes in
as `BearerTokenAuth`, read from its file for every request, so a rotated Secret needs no restart.
It is the `ports.EnrollmentInvitations` the enrollment step (`enrollment.py`) talks through, and
`doctor` checks the authentik side with it.

authentik's corners, absorbed here (facts: `../shared/reference/authentik/FACTS.md`):
- the invitation takes the flow by UUID, the link by slug: the slug is resolved once, lazily;
- a list page's `pagination.next` is 0 when there is none; expired invitations stay listed until
  authentik's cleanup runs, and are reported as they are (the caller decides);
- authentication failures are 403, never 401; a 404 on a delete means "gone" (a single-use
  invitation is deleted when the invitee opens it);
- the invitation's pk is its secret (the link's `itoken`): it is never logged and never put
  into an error text; every answer is parsed into models whose pk is a `SecretStr`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

from .backends.answers import is_web_page, parse_answer
from .backends.transport import SERVER_ERROR_RETRY_AFTER, UNREACHABLE_RETRY_AFTER, no_answer
from .errors import (
    AuthentikForbidden,
    AuthentikMisdirected,
    AuthentikRejected,
    AuthentikTlsError,
    AuthentikUnavailable,
    BackendTlsError,
)
from .ports import EnrollmentInvite
from .settings import SecretSource, current_secret

API_PREFIX = "/api/v3"
INVITATIONS = "/stages/invitation/invitations/"
INVITATION_STAGES = "/stages/invitation/stages/"
PAGE_SIZE = 100  # authentik's cap
INVITATION_STAGE_MODEL = "authentik_stages_invitation.invitationstage"

#: The role the guide creates grants these (FACTS section 4); the fix names them.
INVITATION_PERMISSIONS = (
    "authentik_stages_invitation.view_invitation",
    "authentik_stages_invitation.add_invitation",
    "authentik_stages_invitation.delete_invitation",
)
FLOW_PERMISSION = "authentik_flows.view_flow"
STAGE_PERMISSION = "authentik_stages_invitation.view_invitationstage"
TOKEN_REFUSED = "Token invalid/expired"  # noqa: S105 - authentik's error text
NO_CREDENTIALS = "Authentication credentials were not provided."


class InvitationPathRedaction(logging.Filter):
    """Blanks the pk in `.../invitations/<pk>/` and any `itoken=<pk>` in a log line.

    A delete names the invitation by its pk, which is the enrollment link's secret, and httpx
    logs every request's URL at INFO (on with `--verbose`). Installed on the log handlers.
    """

    _PATTERN = re.compile(r"(invitation/invitations/|itoken=)[^/?#&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._PATTERN.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class BearerTokenAuth(httpx.Auth):
    """`Authorization: Bearer <API token>`, the token read from its source for every request."""

    def __init__(self, token: SecretStr | SecretSource) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = (
            f"Bearer {current_secret(self._token).get_secret_value()}"
        )
        yield request


class _AuthentikModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


_Model = TypeVar("_Model", bound=_AuthentikModel)


class Invitation(_AuthentikModel):
    """One invitation as authentik returns it (the fields we read)."""

    pk: SecretStr
    name: str
    expires: AwareDatetime | None = None
    fixed_data: dict[str, Any] = Field(default_factory=dict)
    single_use: bool = False
    flow: str | None = None

    def to_invite(self) -> EnrollmentInvite:
        email = self.fixed_data.get("email")
        return EnrollmentInvite(
            key=self.pk,
            name=self.name,
            email=email if isinstance(email, str) else None,
            # Never null once saved (FACTS section 2.3); the epoch reads as "expired".
            expires=self.expires or dt.datetime.fromtimestamp(0, dt.UTC),
        )


class Pagination(_AuthentikModel):
    next: float
    current: float
    total_pages: float


class InvitationPage(_AuthentikModel):
    pagination: Pagination
    results: list[Invitation]


class Flow(_AuthentikModel):
    pk: str
    slug: str
    designation: str
    stages: list[str] = Field(default_factory=list)


class InvitationStage(_AuthentikModel):
    pk: str
    name: str
    meta_model_name: str = INVITATION_STAGE_MODEL


class InvitationStagePage(_AuthentikModel):
    pagination: Pagination
    results: list[InvitationStage]


@dataclass(frozen=True)
class _Call:
    method: str
    path: str  # below /api/v3
    what: str  # for messages: never the path of one invitation (it carries the pk)
    params: Mapping[str, str] | None = None
    body: Mapping[str, Any] | None = None
    permission: str | None = None  # what a 403 "no permission" lacks


class AuthentikClient:
    """Typed calls to authentik's invitation API for one enrollment flow."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        auth: httpx.Auth,
        flow_slug: str,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"authentik's base URL must be http(s)://..., got {base_url!r}")
        self._http = http
        self._base = base_url.rstrip("/")
        self._auth = auth
        self.flow_slug = flow_slug
        self._flow_pk: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._base!r}, flow={self.flow_slug!r})"

    # --- ports.EnrollmentInvitations ------------------------------------------------------------

    async def named(self, name: str) -> list[EnrollmentInvite]:
        return [invitation.to_invite() for invitation in await self.list_named(name)]

    async def create(
        self, name: str, *, email: str, display_name: str | None, expires: dt.datetime
    ) -> EnrollmentInvite:
        fixed: dict[str, str] = {"email": email}
        if display_name:
            fixed["name"] = display_name
        body = {
            "name": name,
            "expires": expires.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "fixed_data": fixed,
            "single_use": True,  # the API's default is false (FACTS section 1)
            "flow": await self.flow_pk(),
        }
        call = _Call(
            "POST", INVITATIONS, "creating an invitation", body=body, permission="add_invitation"
        )
        return (await self._send(call, Invitation)).to_invite()

    async def delete(self, invite: EnrollmentInvite) -> None:
        call = _Call(
            "DELETE",
            f"{INVITATIONS}{quote(invite.key.get_secret_value(), safe='')}/",
            f"deleting invitation {invite.name} ({invite.id})",
            permission="delete_invitation",
        )
        response = await self._request(call)
        if response.status_code in (204, 404):
            return  # 404: gone already (opened, expired and cleaned up, or deleted by hand)
        self._raise_for_status(call, response)

    def link(self, invite: EnrollmentInvite) -> SecretStr:
        """`https://<authentik>/if/flow/<slug>/?itoken=<pk>` (FACTS section 2.1)."""
        return SecretStr(
            f"{self._base}/if/flow/{quote(self.flow_slug, safe='')}/"
            f"?itoken={quote(invite.key.get_secret_value(), safe='')}"
        )

    # --- reads --------------------------------------------------------------------------------

    async def list_named(self, name: str) -> list[Invitation]:
        """Every invitation with exactly this name, page by page."""
        return [i async for i in self._listed({"name": name})]

    async def names(self, prefix: str) -> set[str]:
        """authentik's `search` is a case-insensitive substring match over several fields: the
        prefix is checked here again."""
        return {i.name async for i in self._listed({"search": prefix}) if i.name.startswith(prefix)}

    async def _listed(self, query: Mapping[str, str]) -> AsyncIterator[Invitation]:
        """The invitations a filtered listing holds, following the pages (`next` is 0 on the
        last one)."""
        page = 1
        while True:
            params = {**query, "page": str(page), "page_size": str(PAGE_SIZE)}
            call = _Call(
                "GET",
                INVITATIONS,
                "listing invitations",
                params=params,
                permission="view_invitation",
            )
            answer = await self._send(call, InvitationPage)
            for invitation in answer.results:
                yield invitation
            following = int(answer.pagination.next)
            if following == 0 or following <= page:
                return
            page = following

    async def flow(self) -> Flow:
        """The enrollment flow named by the slug; AuthentikMisdirected when there is none."""
        call = _Call(
            "GET",
            f"/flows/instances/{quote(self.flow_slug, safe='')}/",
            f"reading the enrollment flow {self.flow_slug!r}",
            permission="view_flow",
        )
        return await self._send(call, Flow)

    async def flow_pk(self) -> str:
        """The flow's UUID, which an invitation takes (not the slug); resolved once."""
        if self._flow_pk is None:
            self._flow_pk = (await self.flow()).pk
        return self._flow_pk

    async def invitation_stages(self) -> list[InvitationStage]:
        """Every Invitation stage (for `doctor`: does the flow contain one?)."""
        call = _Call(
            "GET",
            INVITATION_STAGES,
            "listing Invitation stages",
            params={"page_size": str(PAGE_SIZE)},
            permission="view_invitationstage",
        )
        return (await self._send(call, InvitationStagePage)).results

    # --- plumbing -----------------------------------------------------------------------------

    async def _send(self, call: _Call, model: type[_Model]) -> _Model:
        response = await self._request(call)
        self._raise_for_status(call, response)
        # Never a ValidationError's text (it quotes the input; invitations' pks are secrets).
        return parse_answer(
            model,
            response,
            backend="authentik",
            what=call.what,
            hint=f"is MATRIX_INVITE_AUTHENTIK_URL ({self._base}) authentik's address?",
            misdirected=AuthentikMisdirected,
            rejected=AuthentikRejected,
        )

    async def _request(self, call: _Call) -> httpx.Response:
        try:
            return await self._http.request(
                call.method,
                self._base + API_PREFIX + call.path,
                params=call.params,
                json=call.body,
                headers={"Accept": "application/json"},
                auth=self._auth,
            )
        except httpx.RequestError as exc:
            try:
                failure = no_answer(
                    exc,
                    backend="authentik",
                    what=call.what,
                    ca_setting="MATRIX_INVITE_AUTHENTIK_CA_BUNDLE",
                )
            except BackendTlsError as untrusted:
                raise AuthentikTlsError(str(untrusted)) from None
            raise AuthentikUnavailable(
                failure.message,
                retry_after=UNREACHABLE_RETRY_AFTER,
                may_have_taken_effect=failure.may_have_taken_effect,
            ) from None

    def _raise_for_status(self, call: _Call, response: httpx.Response) -> None:
        status = response.status_code
        if status < 300:
            return
        detail = _detail(response)
        if status >= 500 or status == 429:
            raise AuthentikUnavailable(
                f"authentik answered {call.what} with {status}",
                retry_after=SERVER_ERROR_RETRY_AFTER,
                # A 5xx may come from a proxy after authentik acted; a 429 did nothing.
                may_have_taken_effect=status >= 500,
            )
        if status == 403 and detail in (TOKEN_REFUSED, NO_CREDENTIALS):
            raise AuthentikForbidden(
                f"authentik refused the API token {call.what} ({detail}): put a valid token of "
                "intent 'api' (not the service account's app password) into the file "
                "MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE names; the operator reads it again"
            )
        if status == 403:
            permission = call.permission or "the needed permission"
            app = "authentik_flows" if permission == "view_flow" else "authentik_stages_invitation"
            raise AuthentikForbidden(
                f"authentik's API token may not do this ({call.what}: {detail or status}): give "
                f"the token's service account a role with {app}.{permission} (the guide's role "
                f"grants {', '.join(INVITATION_PERMISSIONS)}, {FLOW_PERMISSION} and "
                f"{STAGE_PERMISSION})"
            )
        if status == 404 and call.permission == "view_flow" and not is_web_page(response):
            raise AuthentikMisdirected(
                f"authentik has no flow with the slug {self.flow_slug!r}: set "
                "MATRIX_INVITE_AUTHENTIK_FLOW_SLUG to the invitation enrollment flow's slug, or "
                "import the guide's blueprint"
            )
        if status == 404 or is_web_page(response):
            raise AuthentikMisdirected(
                f"authentik's API did not answer {call.what} ({status}, "
                f"{'a web page' if is_web_page(response) else detail or 'no detail'}): is "
                f"MATRIX_INVITE_AUTHENTIK_URL ({self._base}) authentik's address, without /api/v3?"
            )
        raise AuthentikRejected(
            f"authentik refused {call.what} ({status}: {detail or 'no detail'})"
        )


def _detail(response: httpx.Response) -> str:
    """DRF's error text: `detail`, or the field errors of a 400, as one short line."""
    try:
        document = json.loads(response.content)
    except ValueError:
        return ""
    if isinstance(document, dict) and isinstance(document.get("detail"), str):
        text = document["detail"]
    elif isinstance(document, dict):
        text = "; ".join(
            f"{field}: {' '.join(map(str, problems)) if isinstance(problems, list) else problems}"
            for field, problems in document.items()
        )
    else:
        text = ""
    text = " ".join(text.split())
    return text[:300]


# --- doctor ------------------------------------------------------------------------------------

PROBE_NAME = "matrix-invite-operator-doctor-probe"


@dataclass(frozen=True)
class SetupCheck:
    """One line of `doctor` about authentik: verdict "OK" or "FAIL", what, and the details."""

    verdict: str
    check: str
    text: str


async def setup_checks(client: AuthentikClient) -> list[SetupCheck]:
    """The authentik side as the operator needs it: the token accepted, the flow there with an
    Invitation stage, invitations may be added and deleted. Stops at the first failure.

    The last check creates one probe invitation that expired before it was made (so nobody can
    ever use it) and deletes it at once: only doing it proves the permissions.
    """
    checks: list[SetupCheck] = []
    try:
        await client.list_named(PROBE_NAME)
        checks.append(SetupCheck("OK", "authentik token", "accepted; may view invitations"))
        flow = await client.flow()
        if flow.designation != "enrollment":
            checks.append(
                SetupCheck(
                    "FAIL",
                    "authentik flow",
                    f"{flow.slug} is a {flow.designation} flow; invitations need an enrollment "
                    "flow with an Invitation stage (the guide's blueprint)",
                )
            )
            return checks
        stages = [s for s in await client.invitation_stages() if s.pk in flow.stages]
        if not stages:
            checks.append(
                SetupCheck(
                    "FAIL",
                    "authentik flow",
                    f"{flow.slug} has no Invitation stage: the link's itoken would be ignored and "
                    "the invitee not bound; bind an Invitation stage first in the flow (order 5 "
                    "in the guide's blueprint)",
                )
            )
            return checks
        checks.append(
            SetupCheck(
                "OK",
                "authentik flow",
                f"{flow.slug} (enrollment) has the Invitation stage {stages[0].name}",
            )
        )
        probe = await client.create(
            PROBE_NAME,
            email="doctor@invalid",
            display_name=None,
            expires=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
        )
        await client.delete(probe)
        checks.append(
            SetupCheck(
                "OK",
                "authentik invitations",
                "may add and delete them (a probe, expired before it was made, was added and "
                "deleted)",
            )
        )
    except (AuthentikForbidden, AuthentikMisdirected, AuthentikRejected) as exc:
        checks.append(SetupCheck("FAIL", _failed_check(len(checks)), str(exc)))
    except (AuthentikUnavailable, AuthentikTlsError) as exc:
        checks.append(SetupCheck("FAIL", _failed_check(len(checks)), str(exc)))
    return checks


def _failed_check(passed: int) -> str:
    return ("authentik token", "authentik flow", "authentik invitations")[min(passed, 2)]
