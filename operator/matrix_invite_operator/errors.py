"""The operator's error tree.

Every error we raise says whether waiting can help (`TransientError`) or only a change of the
spec or configuration can (`PermanentError`); the Kopf layer maps exactly these two onto
`kopf.TemporaryError` and `kopf.PermanentError`. Messages are written for an admin reading
`kubectl describe` and must never contain a token value or a credential.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base of all errors the operator raises on purpose."""


class TransientError(OperatorError):
    """Retrying later can succeed: an outage, a timeout, a temporary refusal."""

    def __init__(self, message: str, *, retry_after: float = 30.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(OperatorError):
    """Cannot succeed until someone changes the Invitation or the operator's configuration.

    `needs_spec_change` says which: an Invitation error waits for its next edit; an error in
    the operator's environment (credentials, CA bundle, RBAC) is still retried slowly, so the
    Invitation heals by itself once the admin fixes the environment.
    """

    needs_spec_change = True


class ConfigurationError(PermanentError):
    """The operator's own settings are missing or contradictory."""

    needs_spec_change = False


class InvalidSpecError(PermanentError):
    """The Invitation passed the CRD schema but can never work (e.g. an expiry in the past)."""


# --- token backends -------------------------------------------------------------------------


class BackendError(OperatorError):
    """Something went wrong talking to the token backend (MAS, later Synapse)."""


class BackendUnavailable(BackendError, TransientError):
    """The backend did not answer, answered 5xx, or timed out."""


class BackendAuthError(BackendError, PermanentError):
    """The backend refused our credentials (401 after renewal, 403 invalid_scope, bad client)."""

    needs_spec_change = False


class BackendTlsError(BackendError, PermanentError):
    """The backend's TLS certificate is not trusted: a CA bundle is missing or wrong."""

    needs_spec_change = False


class BackendRejected(BackendError, PermanentError):
    """The backend refused the request itself (400, 422, an unparseable answer to a valid call)."""


class TokenNotFound(BackendError):
    """The token id is unknown to the backend (404): the caller decides whether that is drift."""


class TokenConflict(BackendError):
    """A token with this value already exists (409): the caller looks it up instead."""


# --- mail -----------------------------------------------------------------------------------


class MailError(OperatorError):
    """Sending the invitation mail failed."""


class MailTemporaryError(MailError, TransientError):
    """Connection refused, TLS hiccup, or an SMTP 4xx reply: try again later."""


class MailRejectedError(MailError, PermanentError):
    """An SMTP 5xx reply (e.g. unknown recipient) or refused login: needs a human."""


class MailSetupError(MailRejectedError):
    """The relay refused our login or TLS: the operator's mail settings need fixing."""

    needs_spec_change = False


class MailThrottled(MailError, TransientError):
    """The operator's own send-rate limit has no free slot yet; `retry_after` says when to come
    back (spread over the waiting Invitations, so they do not all return at once)."""


# --- Kubernetes API -------------------------------------------------------------------------


class KubeError(OperatorError):
    """The Kubernetes API refused or failed a request."""


class KubeUnavailable(KubeError, TransientError):
    """The API server did not answer, answered 5xx, or throttled us."""


class KubeForbidden(KubeError, PermanentError):
    """RBAC does not allow what the operator tried: the install lacks a rule."""

    needs_spec_change = False


class KubeNotFound(KubeError):
    """The object is gone (for example deleted while we worked on it)."""


class KubeConflict(KubeError):
    """A write conditioned on a resourceVersion met a newer object (409): read again."""


class SecretConflict(PermanentError):
    """A Secret with our name exists but belongs to something else: we never take it over."""
