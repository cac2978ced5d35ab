"""The operator's error tree.

Every error we raise has one of three classes: waiting helps (`TransientError`: retried with
backoff, `Reconciling`), only a change of the Invitation helps (`PermanentError` with
`needs_spec_change`: `Stalled`, waits for the next edit), or the operator's environment must be
fixed and heals by itself once it is (`PermanentError` without it: `Stalled`, retried slowly).
The Kopf layer maps exactly these onto `kopf.TemporaryError` and `kopf.PermanentError`; the
base classes below (`BackendError`, `MailError`, `KubeError`) are never raised themselves.
Messages are written for an admin reading `kubectl describe` and must never contain a token
value or a credential.

Each class carries its `reason`: the CamelCase word status shows (the `Ready`, `Reconciling` or
`Stalled` condition's reason), Events name, and the metrics label failures with. Where the token
backend matters, `{backend}` in it stands for the backend's name (`MasUnavailable`,
`SynapseUnavailable`); `reason_of` fills it in. There is no other vocabulary of causes.
"""

from __future__ import annotations

from typing import ClassVar

#: The reason of an exception that is not ours: a bug (please report it).
UNEXPECTED = "UnexpectedError"


def backend_word(backend: str) -> str:
    """A backend's name as the first word of a reason: "MAS" → "Mas", "Synapse" → "Synapse"."""
    return backend.capitalize()


def reason_of(error: BaseException, backend: str = "MAS") -> str:
    """The condition reason (and metrics label) for `error`, raised while talking to `backend`."""
    if isinstance(error, OperatorError):
        return type(error).reason.format(backend=backend_word(backend))
    return UNEXPECTED


class OperatorError(Exception):
    """Base of all errors the operator raises on purpose."""

    #: The condition reason; every class that is raised names its own (a test checks).
    reason: ClassVar[str] = "OperatorError"


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

    reason = "OperatorMisconfigured"
    needs_spec_change = False


class InvalidSpecError(PermanentError):
    """The Invitation passed the CRD schema but can never work (e.g. an expiry in the past)."""

    reason = "InvalidSpec"


# --- token backends -------------------------------------------------------------------------


class BackendError(OperatorError):
    """Something went wrong talking to the token backend (MAS, later Synapse)."""

    reason = "{backend}Error"


class BackendUnavailable(BackendError, TransientError):
    """The backend did not answer, answered 5xx, or timed out."""

    reason = "{backend}Unavailable"


class BackendAuthError(BackendError, PermanentError):
    """The backend refused our credentials (401 after renewal, 403 invalid_scope, bad client)."""

    reason = "{backend}AuthFailed"
    needs_spec_change = False


class BackendTlsError(BackendError, PermanentError):
    """The backend's TLS certificate is not trusted: a CA bundle is missing or wrong."""

    reason = "{backend}CertificateUntrusted"
    needs_spec_change = False


class BackendRejected(BackendError, PermanentError):
    """The backend refused the request itself (400, 422, an unparseable answer to a valid call)."""

    reason = "{backend}Rejected"


class BackendMisdirected(BackendError, PermanentError):
    """Something answers at the backend's URL, but not its admin API: a 404 for the API itself
    (wrong URL or port, or a listener without the admin resource) or a page that is not JSON
    (HTML from a web server or proxy). Fixing the URL or the listener heals it."""

    reason = "{backend}ApiNotFound"
    needs_spec_change = False


class BackendClockAhead(BackendError, TransientError):
    """The backend calls a token invalid that by our clock is neither expired, revoked nor used
    up: its clock runs ahead of ours. Heals when the clocks agree."""

    reason = "{backend}ClockAhead"


class TokenNotFound(BackendError, TransientError):
    """The token id is unknown to the backend (404). Callers decide whether that is drift; when
    it escapes, the token vanished between two calls, and the next attempt reads afresh."""

    reason = "TokenNotFound"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message, retry_after=retry_after)


class TokenConflict(BackendError, TransientError):
    """A token with this value already exists (409). Callers look it up instead; when it escapes,
    the next attempt finds it."""

    reason = "TokenConflict"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message, retry_after=retry_after)


# --- mail -----------------------------------------------------------------------------------


class MailError(OperatorError):
    """Sending the invitation mail failed."""

    reason = "MailFailed"


class MailTemporaryError(MailError, TransientError):
    """Connection refused, TLS hiccup, or an SMTP 4xx reply: try again later."""

    reason = "MailDeferred"


class MailRejectedError(MailError, PermanentError):
    """An SMTP 5xx reply (e.g. unknown recipient) or refused login: needs a human."""

    reason = "MailRejected"


class MailSetupError(MailRejectedError):
    """The relay refused our login or TLS: the operator's mail settings need fixing."""

    reason = "MailSetupRefused"
    needs_spec_change = False


class MailThrottled(MailError, TransientError):
    """The operator's own send-rate limit has no free slot yet; `retry_after` says when to come
    back (spread over the waiting Invitations, so they do not all return at once)."""

    reason = "WaitingForMailSlot"


# --- Kubernetes API -------------------------------------------------------------------------


class KubeError(OperatorError):
    """The Kubernetes API refused or failed a request."""

    reason = "KubernetesError"


class KubeUnavailable(KubeError, TransientError):
    """The API server did not answer, answered 5xx, or throttled us."""

    reason = "KubernetesUnavailable"


class KubeForbidden(KubeError, PermanentError):
    """RBAC does not allow what the operator tried: the install lacks a rule."""

    reason = "Forbidden"
    needs_spec_change = False


class KubeNotFound(KubeError, TransientError):
    """The object is gone (for example deleted while we worked on it): the next attempt starts
    from what exists then."""

    reason = "KubernetesObjectGone"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message, retry_after=retry_after)


class KubeConflict(KubeError, TransientError):
    """Someone else changed the object between our read and our write (409; also a write
    conditioned on a resourceVersion that met a newer object): read again and try again."""

    reason = "KubernetesConflict"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class KubeRejected(KubeError, PermanentError):
    """The API server refused the request itself (400, 401, 422, an admission policy...): the
    cluster's setup must change, and the operator retries slowly until it has."""

    reason = "KubernetesRejected"
    needs_spec_change = False


class SecretConflict(PermanentError):
    """A Secret with our name exists but belongs to something else: we never take it over.

    Healed by removing that Secret, not by editing the Invitation: often it is the Secret of a
    deleted Invitation of the same name that the garbage collector has not removed yet."""

    reason = "SecretConflict"
    needs_spec_change = False
