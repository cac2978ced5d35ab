"""MAS's answers mapped onto our error tree, and each request's outcome for the metrics.

A status code means what it means for the Admin API: MAS's JSON error envelope on a 404 says
"no such thing", a bare 404 or a web page says "this is not the Admin API". Error texts MAS
sends back are scrubbed of the token value the request carried.
"""

from __future__ import annotations

import enum
import json

import httpx

from matrix_invite_operator.backends.answers import describe_body, is_web_page
from matrix_invite_operator.backends.mas.models import Call, Endpoint
from matrix_invite_operator.backends.transport import SERVER_ERROR_RETRY_AFTER, plain_text, scrubbed
from matrix_invite_operator.errors import (
    BackendAuthError,
    BackendMisdirected,
    BackendRejected,
    BackendUnavailable,
    TokenConflict,
    TokenNotFound,
)
from matrix_invite_operator.formats import retry_after_seconds


class RequestOutcome(enum.StrEnum):
    """How one Admin API request ended, as counted and reported to `on_request`."""

    OK = "ok"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    INVALID_RESPONSE = "invalid_response"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    AUTH_FAILED = "auth_failed"


#: Answers that say MAS did not act on the request: asked to come back later.
NOT_ACTED_ON = frozenset({httpx.codes.TOO_MANY_REQUESTS, httpx.codes.SERVICE_UNAVAILABLE})


class MasUnavailable(BackendUnavailable):
    """MAS did not answer usefully; says whether the request may have taken effect anyway."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        status: int | None = None,
        may_have_taken_effect: bool = True,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.may_have_taken_effect = may_have_taken_effect


class SessionAlreadyRevoked(BackendRejected):
    """409 to revoking a personal session: it is revoked already."""


def raise_for_status(call: Call, response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    what = f"{call.method} {call.endpoint}"
    reason = _error_text(response, call.secret)
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        # MAS says "no such token" in its JSON error envelope; a bare 404 (or a page) comes from
        # something that is not the Admin API, and must not read as "the token is gone".
        if status == httpx.codes.NOT_FOUND and call.token_id is not None and _mas_error(response):
            raise TokenNotFound(f"MAS has no registration token with id {call.token_id}") from exc
        if status == httpx.codes.NOT_FOUND and call.missing is not None and _mas_error(response):
            raise BackendRejected(f"{call.missing} ({reason})") from exc
        if status == httpx.codes.CONFLICT and call.endpoint is Endpoint.PERSONAL_SESSION_REVOKE:
            raise SessionAlreadyRevoked(reason) from exc
        if status == httpx.codes.NOT_FOUND:
            raise BackendMisdirected(
                f"MAS answered {what} with 404 ({describe_body(response)}): the Admin API is not "
                "at this URL. Check MATRIX_INVITE_MAS_URL (host and port) and that the listener "
                "it points at serves the adminapi resource"
            ) from exc
        if status == httpx.codes.CONFLICT:
            raise TokenConflict("MAS already holds a registration token with this value") from exc
        if status in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
            raise BackendAuthError(
                f"MAS refused our access token for {what} ({status}: {reason}): check that "
                "the operator's client is listed in policy.data.admin_clients"
            ) from exc
        if status == httpx.codes.TOO_MANY_REQUESTS or status >= 500:
            raise MasUnavailable(
                f"MAS answered {what} with {status}: {reason}",
                retry_after=retry_after_seconds(
                    response.headers.get("Retry-After"), SERVER_ERROR_RETRY_AFTER
                ),
                status=status,
                # 429 and 503 say "not now": nothing was done. Any other 5xx may come after
                # the write (MAS's 500 for two racing creates of one value, a proxy's 504).
                may_have_taken_effect=status not in NOT_ACTED_ON,
            ) from exc
        if is_web_page(response):
            raise BackendMisdirected(
                f"MAS answered {what} with {status} and a web page, not the Admin API's JSON: "
                "check MATRIX_INVITE_MAS_URL (host and port)"
            ) from exc
        raise BackendRejected(f"MAS rejected {what} with {status}: {reason}") from exc
    # httpx treats 1xx as no error; MAS never sends one as a final answer.
    raise BackendRejected(f"MAS answered {what} with an unexpected {status}")


def _mas_error(response: httpx.Response) -> bool:
    """Whether the body is MAS's error envelope, `{"errors": [...]}`."""
    try:
        document = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(document, dict) and isinstance(document.get("errors"), list)


def outcome_of(status: int) -> RequestOutcome:
    if 200 <= status < 300:
        return RequestOutcome.OK
    return _OUTCOME_BY_STATUS.get(
        status, RequestOutcome.SERVER_ERROR if status >= 500 else RequestOutcome.REJECTED
    )


_OUTCOME_BY_STATUS = {
    404: RequestOutcome.NOT_FOUND,
    409: RequestOutcome.CONFLICT,
    401: RequestOutcome.UNAUTHORIZED,
    403: RequestOutcome.UNAUTHORIZED,
    429: RequestOutcome.RATE_LIMITED,
}


def _error_text(response: httpx.Response, secret: str | None) -> str:
    text: str
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("errors"), list):
        titles = [
            e["title"]
            for e in document["errors"]
            if isinstance(e, dict) and isinstance(e.get("title"), str)
        ]
        text = ": ".join(titles) or "no error title"
    else:
        text = plain_text(response)
    return scrubbed(text, secret)
