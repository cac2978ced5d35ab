"""The MAS token backend: MAS's Admin API as typed calls, and `TokenBackend` on top of them.

By concern, one module each:

- `models`: the Admin API's endpoints and resources (pydantic, token values as `SecretStr`);
- `errors`: MAS's answers mapped onto our error tree, and each request's outcome (metrics);
- `client`: `MasAdminClient`, the HTTP calls over one caller-owned `httpx.AsyncClient`;
- `token_backend`: `MasTokenBackend`, the repeat-safe `TokenBackend` over the client;
- `accounts`: `MasAccounts`, who signed up with an invited address;
- `sessions`: `PersonalSessions`, access tokens to act in Matrix for onboarding.

The rest of the operator imports from this package, not from its modules.
"""

from matrix_invite_operator.backends.mas.accounts import ACCOUNT_MATCH_TOLERANCE, MasAccounts
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
from matrix_invite_operator.backends.mas.sessions import SESSION_NAME, PersonalSessions
from matrix_invite_operator.backends.mas.token_backend import MasTokenBackend

__all__ = [
    "ACCOUNT_MATCH_TOLERANCE",
    "SESSION_NAME",
    "UNSET",
    "Endpoint",
    "MasAccounts",
    "MasAdminClient",
    "MasTokenBackend",
    "MasUnavailable",
    "PersonalSession",
    "PersonalSessions",
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
