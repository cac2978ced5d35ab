"""The MAS token backend: MAS's Admin API as typed calls, and `TokenBackend` on top of them.

By concern, one module each:

- `models`: the Admin API's endpoints and resources (pydantic, token values as `SecretStr`);
- `errors`: MAS's answers mapped onto our error tree, and each request's outcome (metrics);
- `client`: `MasAdminClient`, the HTTP calls over one caller-owned `httpx.AsyncClient`;
- `token_backend`: `MasTokenBackend`, the repeat-safe `TokenBackend` over the client.

The rest of the operator imports from this package, not from its modules.
"""

from matrix_invite_operator.backends.mas.client import (
    UNSET,
    MasAdminClient,
    RequestObserver,
    Unset,
)
from matrix_invite_operator.backends.mas.errors import (
    MasUnavailable,
    RequestOutcome,
    SessionAlreadyRevoked,
)
from matrix_invite_operator.backends.mas.models import (
    Endpoint,
    PersonalSession,
    RegistrationToken,
    SiteConfig,
    UpstreamProvider,
    User,
    UserEmail,
)
from matrix_invite_operator.backends.mas.token_backend import (
    ACCOUNT_MATCH_TOLERANCE,
    MasTokenBackend,
)

__all__ = [
    "ACCOUNT_MATCH_TOLERANCE",
    "UNSET",
    "Endpoint",
    "MasAdminClient",
    "MasTokenBackend",
    "MasUnavailable",
    "PersonalSession",
    "RegistrationToken",
    "RequestObserver",
    "RequestOutcome",
    "SessionAlreadyRevoked",
    "SiteConfig",
    "Unset",
    "UpstreamProvider",
    "User",
    "UserEmail",
]
