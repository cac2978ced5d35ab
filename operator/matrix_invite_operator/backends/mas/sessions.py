"""`PersonalSessions`: MAS access tokens that act in Matrix for onboarding, one per use.

Each is a personal session of the onboarding user, minted by the Admin API, scoped to a fresh
device, and revoked right after the `with` block (it expires by itself soon anyway).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import string
from collections.abc import AsyncIterator, Callable

from pydantic import SecretStr

from matrix_invite_operator.backends.mas.client import MasAdminClient
from matrix_invite_operator.errors import BackendRejected, OperatorError

logger = logging.getLogger(__name__)

SESSION_SCOPE = "urn:matrix:client:api:* urn:synapse:admin:* urn:matrix:client:device:{device}"
SESSION_NAME = "matrix-invite-operator onboarding"

Observer = Callable[[str, str], None]
"""Called with (what, outcome): ("personal_session", "minted"), ..."""


class PersonalSessions:
    """MAS personal sessions of the onboarding user: one per use, device-scoped, revoked after.

    The device scope makes a revocation take effect at once (MAS deletes the device; without it
    Synapse honours a used token for up to two minutes) and lets the user post (FACTS, "personal
    sessions"). The token lives only in memory for the `with` block.
    """

    def __init__(
        self,
        client: MasAdminClient,
        username: str,
        *,
        server_name: Callable[[], str],
        lifetime_seconds: int,
        observe: Observer | None = None,
    ) -> None:
        self._client = client
        self._username = username
        self._lifetime = lifetime_seconds
        self._observe = observe or (lambda what, outcome: None)
        self._actor_id: str | None = None
        self._server_name = server_name

    @property
    def actor(self) -> str:
        return f"the onboarding user @{self._username}:{self._server_name()}"

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[SecretStr]:
        if self._actor_id is None:
            self._actor_id = (await self._client.user_by_username(self._username)).id
        device = "MIO" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))
        created = await self._client.create_personal_session(
            self._actor_id,
            human_name=SESSION_NAME,
            scope=SESSION_SCOPE.format(device=device),
            expires_in=self._lifetime,
        )
        self._observe("personal_session", "minted")
        try:
            token = created.attributes.access_token
            if token is None:
                raise BackendRejected("MAS created a personal session without an access token")
            yield token
        finally:
            try:
                await self._client.revoke_personal_session(created.id)
                self._observe("personal_session", "revoked")
            except OperatorError as exc:
                # It expires by itself after its short lifetime; say so, never show the token.
                self._observe("personal_session", "revoke_failed")
                logger.warning(
                    "could not revoke personal session %s (it expires within %d s): %s",
                    created.id,
                    self._lifetime,
                    exc,
                )
