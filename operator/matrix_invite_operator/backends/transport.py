"""What both token backends' HTTP clients share about a request that went wrong.

A request that got no answer (timeout, refused or reset connection, an untrusted certificate)
becomes our error with the same words and retry delays for MAS and Synapse; an error answer's
text is made safe to show (the token value scrubbed, whitespace folded, length capped). The
status codes' meanings differ per API and stay with each client.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

from matrix_invite_operator.errors import BackendTlsError

#: Wait before retrying after a 5xx or 429 without a Retry-After header.
SERVER_ERROR_RETRY_AFTER = 15.0
#: Wait before retrying after no answer at all.
UNREACHABLE_RETRY_AFTER = 10.0
#: Longest error text quoted from an answer.
MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class NoAnswer:
    """Why a request got no answer, in words for the admin, and whether it may still have run."""

    message: str
    may_have_taken_effect: bool
    timed_out: bool


def no_answer(exc: httpx.RequestError, *, backend: str, what: str, ca_setting: str) -> NoAnswer:
    """What a failed request amounts to; an untrusted certificate raises `BackendTlsError`.

    A request whose connection was never made (connect timeout, pool timeout, refused) cannot
    have taken effect; one that timed out or broke after it was sent may have.
    """
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return NoAnswer(
            f"{backend} did not answer {what} in time ({kind})",
            may_have_taken_effect=not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout),
            timed_out=True,
        )
    untrusted = certificate_error(exc)
    if untrusted is not None:
        raise BackendTlsError(
            f"{backend} at {origin(exc)} presented a TLS certificate we do not trust "
            f"({untrusted}); if {backend} uses a private CA, set {ca_setting}"
        ) from exc
    return NoAnswer(
        f"No answer from {backend} at {origin(exc)} to {what} ({kind})",
        may_have_taken_effect=not isinstance(exc, httpx.ConnectError),
        timed_out=False,
    )


def certificate_error(exc: BaseException) -> str | None:
    """The verification failure inside a connection error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            # getattr: an SSLCertVerificationError built by hand (not by OpenSSL) lacks both.
            detail = getattr(seen, "verify_message", None) or getattr(seen, "reason", None)
            return str(detail or "verification failed")
        seen = seen.__cause__ or seen.__context__
    return None


def origin(exc: httpx.RequestError) -> str:
    """scheme://host:port of the failed request: never its path (Synapse's carries tokens)."""
    try:
        url = exc.request.url
    except RuntimeError:
        return "the configured URL"
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


def plain_text(response: httpx.Response) -> str:
    """An answer that is no JSON error document, as one line."""
    return " ".join(response.text.split()) or response.reason_phrase or "empty body"


def scrubbed(text: str, secret: str | None) -> str:
    """`text` fit to show: the token the request carried replaced, at most MAX_ERROR_TEXT long."""
    if secret:
        text = text.replace(secret, "<token>")
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 1] + "…"
    return text
